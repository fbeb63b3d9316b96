"""Seconds per sample of Algorithm 1 (``msm_sample``) for 200 steps with w = 1 and w = 3.

Uses a trained checkpoint when given (``--ckpt runs/tiny``), else a freshly
initialised denoiser of the config's size (the cost does not depend on the
weights). The network cost dominates: ``steps * w`` evaluations per sample.

    .venv/bin/python -m benchmarks.sample_speed                          # tiny config, CPU
    .venv/bin/python -m benchmarks.sample_speed --config configs/fastmri_r4.yaml --device cuda
    .venv/bin/python -m benchmarks.sample_speed --ckpt runs/tiny --batch 4 --threads 1
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from benchmarks import REPO
from benchmarks.arguments import AUTO, base_parser, setup_torch

if TYPE_CHECKING:
    from mrimsm.inference import LoadedMSM


def _fresh(config: Path, coils: int, device: str) -> "LoadedMSM":
    """A LoadedMSM-like object from a config, with random weights."""
    from mrimsm.config import load_config
    from mrimsm.diffusion.denoiser import build_denoiser
    from mrimsm.inference import LoadedMSM

    from benchmarks.train_speed import synthetic_batch

    cfg = load_config(config)
    size = cfg.data.simulated.size if cfg.data.simulated is not None else 256
    batch = synthetic_batch(1, size, coils, 0.0)
    center = max(1, round(20 * size / 256))
    den = build_denoiser(cfg.to_dict(), 2, (size, size)).to(device).eval()
    meta = {
        "operator": "MultiCoilMRI",
        "image_shape": [size, size],
        "channels": 2,
        "mask": {"kind": "paper", "accel": 4.0, "center_lines": center},
        "reference_maps": batch["maps"][0],
        "schedule": {"num_steps": cfg.diffusion.num_steps},
    }
    return LoadedMSM(den, cfg.to_dict(), meta, 0, str(config))


def main(argv: Optional[list[str]] = None) -> None:
    ap = base_parser(__doc__, threads=None, threads_help="torch CPU threads (default: torch's own)", device=AUTO)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint or run directory")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--w", type=int, action="append", help="masks per step (default: 1 and 3)")
    ap.add_argument("--batch", type=int, default=1, help="samples drawn together")
    ap.add_argument("--coils", type=int, default=8)
    args = ap.parse_args(argv)
    setup_torch(args, cpu_default=None)

    from mrimsm.inference import generate, load_msm

    loaded = load_msm(args.ckpt, device=args.device) if args.ckpt else _fresh(args.config, args.coils, args.device)
    shape = loaded.meta["image_shape"]
    src = args.ckpt or args.config
    print(f"{src}: {shape[0]} x {shape[1]}, device {args.device}, torch threads {torch.get_num_threads()}")
    print("| w | steps | batch | network evaluations / sample | seconds / sample |")
    print("|---|---|---|---|---|")
    generate(loaded, 1, steps=2, w=1, batch_size=1, device=args.device)  # warm-up
    for w in args.w or [1, 3]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = generate(loaded, args.batch, steps=args.steps, w=w, batch_size=args.batch, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.batch
        assert torch.isfinite(torch.view_as_real(x)).all()
        print(f"| {w} | {args.steps} | {args.batch} | {args.steps * w} | {dt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
