"""Does the left-right flip augmentation help? An A/B training run on a small subset.

Two priors are trained from scratch with the same config, seed, data subset and step
count, one with ``data.flip_prob = 0`` and one with ``--flip`` (default 0.5: each
example's k-space, coil maps and mask flipped together, mrimsm/data/augment.py). The
subset is a few shards of the config's simulated training set (``--shards``, the
first of each orientation in turn), because augmentation matters where data is scarce
and a scarce set shows it within minutes of CPU; the shipped priors see every slice
hundreds of times, which is the same regime.

Both priors are then scored on held-out MNI slices (never trained on) with

* the denoiser check of ``benchmarks.prior256 --check denoiser``: the relative error
  ``||A_S x0_hat - y||^2 / ||y||^2`` of the local clean estimate at several steps ``t``;
* optionally (``--recon``) a posterior reconstruction at R = ``--accel`` with the
  64 x 64 prior's solver (``PosteriorSettings``' defaults, ``--recon-steps`` / ``--recon-samples``
  to make it cheaper), both PSNR conventions.

    .venv/bin/python -m benchmarks.augment_ab --steps 1500 --shards 2 --recon --out results/augment
    .venv/bin/python -m benchmarks.augment_ab --config configs/tiny.yaml --steps 20 --out /tmp/ab   # smoke test

Writes ``<out>/augment_ab.md`` and ``.csv``; the two run directories stay in ``<out>/runs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import base_parser, run_main, setup_torch
from benchmarks.data import simulated_volumes, write_heldout_files
from benchmarks.prior256 import denoiser_check
from benchmarks.progress import log_line
from benchmarks.runs import Run, build_methods, evaluate
from benchmarks.tables import find, header_lines, md_table, summarize, write_results


def subset_root(source: Path, out: Path, shards: int) -> tuple[Path, list[str]]:
    """A prepared directory that holds the first ``shards`` train shards of ``source``
    (taken round-robin over the orientations in the shard names) and its val shards,
    as symlinks, with a manifest listing only those. Returns ``(root, train shard names)``."""
    manifest = json.loads((source / "manifest.json").read_text())
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    by_kind: dict[str, list[dict]] = {}
    for s in train:
        by_kind.setdefault(s["name"].split("_")[1] if "_" in s["name"] else "", []).append(s)
    picked: list[dict] = []
    while len(picked) < min(shards, len(train)):
        for group in by_kind.values():
            if group and len(picked) < shards:
                picked.append(group.pop(0))
    keep = picked + [s for s in manifest["shards"] if s["split"] != "train"]
    out.mkdir(parents=True, exist_ok=True)
    for s in keep:
        dst = out / s["shard"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to((source / s["shard"]).resolve())
    sub = dict(manifest, shards=keep, subset_of=str(source))
    (out / "manifest.json").write_text(json.dumps(sub, indent=1))
    return out, [s["name"] for s in picked]


def train_arm(config: Path, flip: float, data: Path, run_dir: Path, steps: int, batch: int, threads: int) -> float:
    """Train one arm with ``mrimsm train`` (resumes an unfinished run); returns wall seconds."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg.setdefault("data", {})["flip_prob"] = float(flip)
    cfg["data"].pop("simulated", None)
    cfg["data"]["root"] = str(data)
    cfg["train"]["batch_size"] = int(batch)
    cfg["train"]["ckpt_every"] = max(50, steps // 10)
    cfg["train"]["sample_every"] = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    arm_cfg = run_dir / "arm.yaml"
    arm_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "mrimsm", "train", str(arm_cfg), "--out", str(run_dir), "--max-steps", str(steps),
           "--threads", str(threads), "--quiet", "--device", "cpu"]
    if (run_dir / "last.pt").exists():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR / "augment", threads=1)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "default_msm.yaml",
                    help="MSM config with data.simulated (default: the 64 x 64 prior's)")
    ap.add_argument("--flip", type=float, default=0.5, help="flip probability of the augmented arm")
    ap.add_argument("--shards", type=int, default=2, help="training shards in the subset (8 slices each)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slices", type=int, default=6, help="held-out MNI slices (default 6)")
    ap.add_argument("--steps-t", type=int, nargs="+", default=[5, 20, 50, 100])
    ap.add_argument("--recon", action="store_true", help="also reconstruct the held-out slices with each prior")
    ap.add_argument("--accel", type=float, default=6.0)
    ap.add_argument("--recon-steps", type=int, default=None)
    ap.add_argument("--recon-samples", type=int, default=None)
    args = ap.parse_args(argv)
    setup_torch(args)

    def body() -> int:
        from mrimsm.config import load_config
        from mrimsm.data.training_data import ensure_simulated_dataset
        from mrimsm.distributed import DistInfo
        from mrimsm.errors import MrimsmError

        t_start = time.perf_counter()
        cfg = load_config(args.config)
        sim = cfg.data.simulated
        if sim is None:
            raise MrimsmError(f"{args.config}: needs data.simulated (the subset is cut from the simulated set)")
        if not 0 < args.flip <= 1:
            raise MrimsmError(f"--flip must be in (0, 1], got {args.flip}")
        source = ensure_simulated_dataset(cfg, DistInfo())  # returns at once when it is built
        root, names = subset_root(source, args.out / "data", args.shards)
        arms = {"no flip": 0.0, f"flip {args.flip:g}": args.flip}
        runs, seconds = {}, {}
        for label, p in arms.items():
            run_dir = args.out / "runs" / ("flip0" if p == 0 else f"flip{p:g}")
            seconds[label] = train_arm(args.config, p, root, run_dir, args.steps, args.batch, args.threads)
            runs[label] = run_dir
        rows = []
        with tempfile.TemporaryDirectory(prefix="mrimsm-augment-") as work:
            files = write_heldout_files(Path(work), args.slices, sim.size, sim.num_coils, sim.rho, seed=0) \
                if sim.pixel == "fit" else None
            if files is None:
                raise MrimsmError("this script simulates held-out slices with pixel: fit configs only")
            for label, run_dir in runs.items():
                (check,) = denoiser_check(run_dir / "last.pt", {"heldout": files}, args.steps_t, seed=0)
                rows.append({"arm": label, "flip_prob": arms[label], "train_seconds": round(seconds[label], 1), **check})
            if args.recon:
                runs_r = [Run(label, "msm", {"checkpoint": runs[label] / "last.pt", "steps": args.recon_steps,
                                               "samples": args.recon_samples}) for label in runs]
                common = {"settings": None, "device": "cpu", "seed": 0}
                built = build_methods(runs_r, common)
                vols = {float(args.accel): simulated_volumes(files, float(args.accel), 0)}
                summary = summarize(evaluate(vols, runs_r, built, common, None, log_line,
                                                 keep=lambda r, k: False), runs_r)
                for row in rows:
                    s = find(summary, float(args.accel), row["arm"])
                    row.update({"psnr_paper": s["psnr_paper_mean"], "psnr_fastmri": s["psnr_fastmri_mean"],
                                "ssim_paper": s["ssim_paper_mean"]})
        head = ["arm", "train s"] + [f"t = {t}" for t in args.steps_t]
        body_rows = [[r["arm"], f"{r['train_seconds']:.0f}"] + [f"{r[f't{t}']:.4f}" for t in args.steps_t] for r in rows]
        if args.recon:
            head += [f"R {args.accel:g} PSNR paper", "PSNR fastMRI", "SSIM paper"]
            for cells, r in zip(body_rows, rows):
                cells += [f"{r['psnr_paper']:.2f}", f"{r['psnr_fastmri']:.2f}", f"{r['ssim_paper']:.3f}"]
        lines = header_lines("Flip augmentation A/B", sys.argv, "cpu")
        lines += [f"Config {args.config.name}; {args.steps} steps at batch {args.batch} from scratch, same seed, "
                  f"on {len(names)} training shards ({', '.join(names)}); held-out check on {args.slices} MNI "
                  f"slices ({sim.size} x {sim.size}, {sim.num_coils} coils, noise {sim.rho:g}). Denoiser columns: "
                  "relative error of the local clean estimate (lower is better).", "",
                  md_table(head, body_rows), "",
                  f"Total wall time {(time.perf_counter() - t_start) / 60:.1f} min.", ""]
        write_results(args.out, "augment_ab", "\n".join(lines), rows)
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
