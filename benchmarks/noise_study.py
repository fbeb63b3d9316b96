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
classical reference row. Writes ``noise_study.md``, ``noise_study.csv`` (one row per prior,
R and test noise) and ``noise_study.png`` into ``--out``.

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
from typing import Optional, Sequence

import numpy as np

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import base_parser, setup_torch
from benchmarks.figures import pyplot, save_figure

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

ORIENTATIONS = ("axial", "coronal", "sagittal")


def heldout_files(work: Path, noise: float, slices_per_orientation: int, size: int, coils: int) -> list[Path]:
    """One simulated file per orientation of held-out MNI slices at test ``noise`` (the same
    coil maps and phases at every noise, so noise 0 is each file's noise-free twin)."""
    from mrimsm.data.simulate import mni_split_indices, simulate_volume_file

    out = []
    for k, orient in enumerate(ORIENTATIONS):
        idx = mni_split_indices(orient, "heldout", step=2)
        pick = [idx[int(i)] for i in np.linspace(0, len(idx) - 1, slices_per_orientation + 2)[1:-1]]
        path = work / f"noise_{noise:g}" / f"heldout_{orient}.h5"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            simulate_volume_file(path, orient, pick, size, coils, noise, True, seed=100 + k)
        out.append(path)
    return out


def evaluate(settings: Sequence[Setting], runs: Path, args: argparse.Namespace) -> list[dict]:
    """Rows ``{label, setting fields, steps, accel, test_noise, psnr/ssim paper, psnr fastMRI}``
    against the noise-free object, for every prior and CS-L1."""
    import h5py

    from mrimsm.metrics import per_slice_metrics, volume_metrics
    from mrimsm.recon import prepare_volume, run_method

    clean = heldout_files(args.work, 0.0, args.slices, 64, args.coils)
    truth = {}
    for f in clean:
        with h5py.File(f, "r") as h:
            truth[f.name] = np.asarray(h["reconstruction_rss"][()], dtype=np.float32)
    rows = []
    for noise in args.noise:
        files = heldout_files(args.work, noise, args.slices, 64, args.coils)
        for accel in args.accels:
            vols = [prepare_volume(f, accel, args.seed) for f in files]
            entries = [("CS-L1", "cs", {}, None)]
            entries += [(s.label, "msm", {"checkpoint": str(runs / run_name(s) / "last.pt"), "steps": args.msm_steps,
                                          "samples": 1}, s) for s in settings]
            for label, method, options, s in entries:
                psnr, ssim, fast, secs = [], [], [], []
                for vol in vols:
                    res = run_method(vol, method, {"seed": args.seed, "device": "cpu", **options})
                    ref = truth[vol.path.name][list(vol.slices)]
                    paper = per_slice_metrics(ref, res.reconstruction)
                    psnr += list(paper["psnr"])
                    ssim += list(paper["ssim"])
                    fast.append(volume_metrics(ref, res.reconstruction)["psnr"])
                    secs.append(res.seconds_per_slice)
                row = {"label": label, "data_rho": "" if s is None else s.data_rho,
                       "loss": "" if s is None else s.loss, "train_accel": "" if s is None else s.accel,
                       "steps": "" if s is None else checkpoint_step(runs / run_name(s) / "last.pt"),
                       "accel": float(accel), "test_noise": float(noise),
                       "psnr_paper": float(np.mean(psnr)), "ssim_paper": float(np.mean(ssim)),
                       "psnr_fastmri": float(np.mean(fast)), "seconds_per_slice": float(np.mean(secs))}
                rows.append(row)
                print(f"R={accel:g} noise={noise:g} {label:<28} PSNR {row['psnr_paper']:.2f} dB (paper) "
                      f"{row['psnr_fastmri']:.2f} dB (fastMRI) SSIM {row['ssim_paper']:.4f}", file=sys.stderr, flush=True)
    return rows


# -- outputs ---------------------------------------------------------------------------------


def write_outputs(rows: list[dict], out: Path, argv: Sequence[str], args: argparse.Namespace) -> None:
    """``noise_study.csv`` (rows), ``noise_study_readme.csv`` (:func:`readme_table`, for
    ``benchmarks/results/``), ``noise_study.md`` (a table per test noise) and ``noise_study.png``."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    tmp = out / ".noise_study.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "noise_study.csv")
    tmp = out / ".noise_study_readme.csv.tmp"
    tmp.write_text(readme_table(rows, f"python {' '.join(argv)}", args))
    tmp.replace(out / "noise_study_readme.csv")
    lines = ["# MSM noise study (64 x 64)", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python {' '.join(argv)}`.", "",
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
    tmp = out / ".noise_study.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "noise_study.md")
    _figure(rows, out / "noise_study.png")


def readme_table(rows: list[dict], command: str, args: argparse.Namespace) -> str:
    """The study as one result file in :func:`benchmarks.readme.format_table`'s format: a row
    per prior (and CS-L1), a column per R and test noise, cells ``PSNR paper / fastMRI``."""
    from benchmarks.readme import format_table

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
    return format_table({"date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command, "setup": setup},
                        header, body)


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
