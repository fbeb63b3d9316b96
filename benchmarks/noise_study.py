"""The paper's noise claim at 64 x 64: MSM priors trained on subsampled k-space with noise
rho in {0, 0.01, 0.03, 0.1}, each with the noiseless loss (``diffusion.rho: 0.0``) and the
noisy loss (``diffusion.rho: null``: SURE where sigma_t > rho, the pseudo-clean reference
below), and an **oracle**: the same network and budget on fully sampled, noise-free k-space
(R = 1, rho = 0), the paper's "oracle diffusion" upper bound.

    .venv/bin/python -m benchmarks.noise_study --steps 900 --out results/noise_study

Every run trains with ``mrimsm train`` into ``--runs`` (default ``runs/noise_study/<label>``),
resumed from its last state when the command is run again (a larger ``--steps`` continues
the same runs), round-robin in chunks of ``--chunk`` steps so that an interrupted study leaves
every run at nearly the same step. Then each prior reconstructs held-out MNI152 slices
(never trained on) at R = 4 and 6 and at test noise 0.002 and 0.01, with the same masks,
maps and seeds for every prior; PSNR / SSIM are taken against the **noise-free object**
(the same simulation without noise: its RSS image). CS-L1 on the same volumes is the
classical reference row. Each row records the step of the checkpoint evaluated (an
interrupted study leaves the priors at different steps). Writes ``noise_study.md``,
``noise_study.csv`` (one row per prior, R and test noise), ``noise_study_readme.csv`` (the
table for ``benchmarks/results/``) and ``noise_study.png`` into ``--out``.

Approximate by design: a small network (``--channels``, default 16) and a short budget, so
absolute numbers sit below the shipped prior's; the comparison is between losses and noise
levels at equal network, data and steps. The evaluation uses a short chain (``--msm-steps``,
one sample) to keep eight priors affordable on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import base_parser, setup_torch
from benchmarks.figures import pyplot, save_figure

if TYPE_CHECKING:
    from benchmarks.runs import Record, Run

BASE_CONFIG = REPO / "configs" / "default_msm.yaml"


@dataclass(frozen=True)
class Setting:
    """One prior of the study: its training data noise, loss and acceleration."""

    label: str
    data_rho: float
    loss: str  # "noiseless" (diffusion.rho 0.0) or "noisy" (diffusion.rho null: the data's rho)
    accel: float = 4.0

    @property
    def oracle(self) -> bool:
        return self.accel == 1.0


def study_settings(rhos: Sequence[float], oracle: bool = True) -> list[Setting]:
    """The noiseless loss at every rho, the noisy loss at every rho > 0, and the oracle."""
    out = []
    for rho in rhos:
        out.append(Setting(f"rho {rho:g}, noiseless loss", float(rho), "noiseless"))
        if rho > 0:
            out.append(Setting(f"rho {rho:g}, noisy loss", float(rho), "noisy"))
    if oracle:
        out.append(Setting("oracle (R 1, rho 0)", 0.0, "noiseless", accel=1.0))
    return out


def run_name(setting: Setting) -> str:
    """A directory name for ``setting``."""
    if setting.oracle:
        return "oracle"
    return f"rho{setting.data_rho:g}-{setting.loss}"


def study_config(setting: Setting, channels: int, seed: int) -> dict:
    """The training config of ``setting``: ``configs/default_msm.yaml`` with the data's
    noise, acceleration and loss of the setting and ``channels`` base channels."""
    import yaml

    base = yaml.safe_load(BASE_CONFIG.read_text())
    cfg = copy.deepcopy(base)
    sim = cfg["data"]["simulated"]
    sim["rho"], sim["accel"], sim["seed"] = setting.data_rho, setting.accel, seed
    cfg["diffusion"]["rho"] = None if setting.loss == "noisy" else 0.0
    cfg["model"]["model_channels"] = int(channels)
    cfg["train"].update(sample_every=10**9, log_every=20, ckpt_every=100, seed=seed)
    return cfg


def trained_steps(run_dir: Path) -> int:
    """The last logged step of a run (0 when it has not started)."""
    log = run_dir / "log.jsonl"
    if not (run_dir / "last.pt").is_file() or not log.is_file():
        return 0
    step = 0
    for line in log.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return step


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at (the log can run up to ``log_every`` steps ahead
    of the last checkpoint when a run was stopped)."""
    from mrimsm.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["step"])


def train_round_robin(settings: Sequence[Setting], runs: Path, steps: int, chunk: int, channels: int,
                      seed: int, threads: int) -> None:
    """Train every setting to ``steps``, ``chunk`` steps at a time in turn (resumable)."""
    import yaml

    while True:
        behind = [(trained_steps(runs / run_name(s)), s) for s in settings]
        behind = [(done, s) for done, s in behind if done < steps]
        if not behind:
            return
        done, s = min(behind, key=lambda x: x[0])
        run_dir = runs / run_name(s)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir.parent / f"{run_name(s)}.yaml"
        cfg_path.write_text(yaml.safe_dump(study_config(s, channels, seed), sort_keys=False))
        target = min(steps, (done // chunk + 1) * chunk)
        cmd = [sys.executable, "-m", "mrimsm", "train", str(cfg_path), "--out", str(run_dir), "--max-steps",
               str(target), "--threads", str(threads), "-q"]
        if (run_dir / "last.pt").is_file():
            cmd.append("--resume")
        print(f"[{time.strftime('%H:%M:%S')}] {s.label}: steps {done} -> {target}", file=sys.stderr, flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env)


# -- evaluation ------------------------------------------------------------------------------


def evaluate(settings: Sequence[Setting], runs: Path, args: argparse.Namespace) -> list[dict]:
    """Rows ``{label, setting fields, steps, accel, test_noise, psnr/ssim paper, psnr fastMRI}``
    against the noise-free object, for every prior and CS-L1.

    The held-out MNI slices are :func:`benchmarks.data.write_heldout_files`' (``3 *
    --slices`` of them, the same seeds at every test noise, so the files at noise 0 are the
    noise-free twins); every prior reconstructs the same volumes, masks and maps."""
    from benchmarks.data import read_references, simulated_volumes, write_heldout_files
    from benchmarks.progress import log_line
    from benchmarks.runs import Run, build_methods, evaluate as run_all, truth_metrics

    count = 3 * args.slices

    def files_at(noise: float) -> list[Path]:
        return write_heldout_files(args.work / "heldout" / f"noise_{noise:g}", count, size=64, coils=args.coils,
                                   noise=noise)

    clean = read_references(files_at(0.0))
    entries = [Run("CS-L1", "cs")] + [
        Run(s.label, "msm", {"checkpoint": str(runs / run_name(s) / "last.pt"), "steps": args.msm_steps, "samples": 1})
        for s in settings]
    common = {"seed": args.seed, "device": "cpu"}
    built = build_methods(entries, common)
    steps = {s.label: checkpoint_step(runs / run_name(s) / "last.pt") for s in settings}
    rows = []
    for noise in args.noise:
        files = files_at(noise)
        vols = {float(a): simulated_volumes(files, float(a), args.seed) for a in args.accels}
        records = run_all(vols, entries, built, common, None, log_line, keep=lambda run, k: True)
        rows += study_rows(records, entries, truth_metrics(records, clean), settings, steps, float(noise))
    return rows


def study_rows(records: Sequence["Record"], entries: Sequence["Run"], truth: Mapping[tuple[float, str], dict],
               settings: Sequence[Setting], steps: Mapping[str, int], noise: float) -> list[dict]:
    """The study's rows at test ``noise`` from :func:`benchmarks.runs.evaluate`'s ``records``:
    one per (R, run) of :func:`benchmarks.tables.summarize`, with the prior's setting and
    trained ``steps`` (``label -> step``; empty for CS-L1) and the metrics against the
    noise-free object (``truth``: :func:`benchmarks.runs.truth_metrics` of the records)."""
    from benchmarks.tables import summarize

    by_label = {s.label: s for s in settings}
    rows = []
    for r in summarize(records, entries):
        s, t = by_label.get(r["label"]), truth[(r["accel"], r["label"])]
        rows.append({"label": r["label"], "data_rho": "" if s is None else s.data_rho,
                     "loss": "" if s is None else s.loss, "train_accel": "" if s is None else s.accel,
                     "steps": "" if s is None else steps[s.label], "accel": r["accel"], "test_noise": noise,
                     "psnr_paper": t["psnr_clean_paper"], "ssim_paper": t["ssim_clean_paper"],
                     "psnr_fastmri": t["psnr_clean_fastmri"], "seconds_per_slice": r["seconds_per_slice"]})
    return rows


# -- outputs ---------------------------------------------------------------------------------


def write_outputs(rows: list[dict], out: Path, argv: Sequence[str], args: argparse.Namespace) -> None:
    """``noise_study.csv`` (rows) and ``noise_study.md`` (a table per test noise), by
    :func:`benchmarks.tables.write_results`; ``noise_study_readme.csv`` (:func:`readme_table`,
    for ``benchmarks/results/``) and ``noise_study.png``."""
    from benchmarks.tables import write_results, write_text

    command = f"python {' '.join(argv)}"
    lines = ["# MSM noise study (64 x 64)", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}`.", "",
             f"Priors: {args.channels} base channels, the steps shown, batch 8; evaluation: {args.slices} held-out "
             f"MNI slices per orientation, {args.coils} coils, MSM {args.msm_steps} steps x 1 sample; PSNR / SSIM "
             "against the noise-free object (paper: per slice, min-max normalized; fastMRI: per volume).", ""]
    for noise in sorted({r["test_noise"] for r in rows}):
        lines += [f"## test noise {noise:g}", "",
                  "| prior | steps | R 4: PSNR paper / fastMRI | SSIM | R 6: PSNR paper / fastMRI | SSIM |",
                  "|---|---|---|---|---|---|"]
        for label in dict.fromkeys(r["label"] for r in rows):
            cells = [label, str(next(r["steps"] for r in rows if r["label"] == label))]
            for accel in (4.0, 6.0):
                r = next((r for r in rows if r["label"] == label and r["accel"] == accel and r["test_noise"] == noise),
                         None)
                cells += ["-", "-"] if r is None else [f"{r['psnr_paper']:.2f} / {r['psnr_fastmri']:.2f}",
                                                       f"{r['ssim_paper']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    write_results(out, "noise_study", "\n".join(lines), rows)
    write_text(out / "noise_study_readme.csv", readme_table(rows, command, args))
    _figure(rows, out / "noise_study.png")


def readme_table(rows: list[dict], command: str, args: argparse.Namespace) -> str:
    """The study as one result file in :func:`benchmarks.readme.format_table`'s format: a row
    per prior (and CS-L1), a column per R and test noise, cells ``PSNR paper / fastMRI``."""
    from benchmarks.readme import measured_table

    panels = sorted({(r["accel"], r["test_noise"]) for r in rows})
    header = ["prior", "steps"] + [f"R {a:g}, noise {n:g}" for a, n in panels]
    body = []
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = {(r["accel"], r["test_noise"]): r for r in rows if r["label"] == label}
        first = next(iter(mine.values()))
        body.append([label, str(first["steps"])] + [
            f"{mine[p]['psnr_paper']:.2f} / {mine[p]['psnr_fastmri']:.2f}" if p in mine else "-" for p in panels])
    setup = (f"64 x 64 priors, {args.channels} base channels, batch 8, the noisy loss = diffusion.rho null; evaluation "
             f"on {3 * args.slices} held-out MNI slices, {args.coils} coils, MSM {args.msm_steps} steps x 1 sample; "
             "PSNR paper / fastMRI (dB) against the noise-free object")
    return measured_table(command, setup, header, body)


def _figure(rows: list[dict], path: Path) -> None:
    """PSNR (paper, noise-free object) against the training rho, one line per loss, the oracle
    and CS-L1 as horizontal lines; a panel per R and test noise."""
    plt = pyplot()
    panels = sorted({(r["accel"], r["test_noise"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (accel, noise) in zip(axes[0], panels):
        here = [r for r in rows if r["accel"] == accel and r["test_noise"] == noise]
        for loss, style in (("noiseless", "o-"), ("noisy", "s--")):
            pts = sorted((r["data_rho"], r["psnr_paper"]) for r in here if r["loss"] == loss and r["train_accel"] == 4.0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{loss} loss")
        for r in here:
            if r["train_accel"] == 1.0:
                ax.axhline(r["psnr_paper"], color="k", lw=1, label="oracle")
            if r["label"] == "CS-L1":
                ax.axhline(r["psnr_paper"], color="gray", ls=":", label="CS-L1")
        ax.set_title(f"R = {accel:g}, test noise {noise:g}")
        ax.set_xlabel("training data noise rho")
        ax.set_ylabel("PSNR dB (paper, noise-free object)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "noise_study", threads=1, seed=0)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1], help="training data noise levels")
    ap.add_argument("--no-oracle", action="store_true", help="leave the oracle prior out")
    ap.add_argument("--steps", type=int, default=400, help="training steps per prior (default 400)")
    ap.add_argument("--chunk", type=int, default=200, help="steps per turn of the round robin")
    ap.add_argument("--channels", type=int, default=16, help="UNet base channels (default 16)")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "noise_study", help="run directories")
    ap.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the runs as they are")
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.002, 0.01], help="test noise levels")
    ap.add_argument("--slices", type=int, default=2, help="held-out slices per orientation")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--msm-steps", type=int, default=20, help="MSM reverse steps in the evaluation")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mrimsm" / "noise_study")
    args = ap.parse_args(argv)
    settings = study_settings(args.rhos, oracle=not args.no_oracle)
    if not args.eval_only:
        train_round_robin(settings, args.runs, args.steps, args.chunk, args.channels, args.seed, args.threads)
    if args.train_only:
        return 0
    missing = [s.label for s in settings if trained_steps(args.runs / run_name(s)) == 0]
    if missing:
        print(f"error: not trained yet: {', '.join(missing)}", file=sys.stderr)
        return 2
    setup_torch(args)
    rows = evaluate(settings, args.runs, args)
    write_outputs(rows, args.out, ["-m", "benchmarks.noise_study", *(argv if argv is not None else sys.argv[1:])], args)
    print(f"wrote {args.out / 'noise_study.md'}, noise_study.csv and noise_study.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
