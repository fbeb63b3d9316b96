"""Benchmark: box inpainting and 4x super-resolution of held-out natural images
with the MSM image prior, against the simple baselines (mean fill, bicubic).

    .venv/bin/python -m benchmarks.restore                                  # shipped tiny prior
    .venv/bin/python -m benchmarks.restore --checkpoint runs/default_images --limit 8
    .venv/bin/python -m benchmarks.restore --data /data/ffhq128/heldout --checkpoint runs/ffhq

Defaults: the held-out crops of the scikit-image photograph folder
(``data_scripts/make_image_folder.py data/images``, built if missing), the shipped
``default_images.pt``, observation noise 0.01, two solver settings: one sample with
200 steps and w = 3 (the paper's setting) and the mean of 4 samples with 100 steps.
Each image ``i`` is degraded with seed ``seed + i`` (:func:`mrimsm.restore.evaluate_folder`),
so every setting and the baseline see the same observations.
Writes ``results/restore.md`` and ``results/restore.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks import REPO, RESULTS_DIR
from benchmarks.arguments import base_parser, parse_value, run_main
from benchmarks.data import data_script
from benchmarks.progress import log_line
from benchmarks.tables import header_lines, md_table, write_results

DEFAULT_DATA = REPO / "data" / "images"
#: (label, posterior settings): the paper's setting from noise, and the default (warm start
#: from the baseline image, mean of 4 samples; mrimsm.restore.image_settings)
DEFAULT_SETTINGS = (
    ("msm from noise, 200 steps, 1 sample (the paper)", dict(steps=200, w=3, samples=1, t0=1.0, init="none")),
    ("msm default", {}),
)


def parse_setting(text: str) -> tuple[str, dict]:
    """``"steps=50 t0=0.3 init=baseline"`` -> (label, settings dict)."""
    return text, {key: parse_value(value) for key, _, value in (item.partition("=") for item in text.split())}


def _heldout(args: argparse.Namespace) -> Path:
    """The folder of held-out images: ``--data``, else the default one (built when missing)."""
    if args.data is not None:
        return Path(args.data)
    folder = DEFAULT_DATA / "heldout"
    if not folder.is_dir():
        data_script("make_image_folder").main([str(DEFAULT_DATA)])
    return folder


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR, threads=1, seed=0, quiet="no log line per task and setting")
    ap.add_argument("--data", help="folder of held-out PNG/JPEG images (default: data/images/heldout)")
    ap.add_argument("--checkpoint", help="image MSM checkpoint (default: the shipped default_images.pt)")
    ap.add_argument("--tasks", nargs="+", default=["inpaint-box", "sr4"], choices=["inpaint-box", "sr4"])
    ap.add_argument("--limit", type=int, default=None, help="at most this many images")
    ap.add_argument("--noise", type=float, default=0.01, help="observation noise std (images in [-1, 1])")
    ap.add_argument("--setting", action="append", default=None, metavar='"KEY=V KEY=V"',
                    help="a solver setting over the defaults (repeatable), e.g. --setting \"steps=50 t0=0.3\"")
    args = ap.parse_args(argv)

    def body() -> int:
        import torch

        from mrimsm.inference import load_msm
        from mrimsm.restore import baseline_name, default_image_checkpoint, evaluate_folder, image_settings

        torch.set_num_threads(max(1, args.threads))
        folder = _heldout(args)
        ckpt = args.checkpoint or default_image_checkpoint()
        loaded = load_msm(ckpt)
        settings = DEFAULT_SETTINGS if args.setting is None else tuple(parse_setting(t) for t in args.setting)
        rows, t_start = [], time.perf_counter()
        for task in args.tasks:
            base = baseline_name(task)
            for label, overrides in settings:
                chosen = image_settings(task, **overrides)
                steps, w, samples = chosen.steps, chosen.w, chosen.samples
                res = evaluate_folder(loaded, folder, task, chosen, noise=args.noise, seed=args.seed, limit=args.limit)
                n = len(res["names"])
                m, b = res["mean"]["msm"], res["mean"][base]
                row = {
                    "task": task, "setting": label, "steps": steps, "w": w, "samples": samples, "images": n,
                    "msm_psnr": round(m["psnr"], 3), "msm_ssim": round(m["ssim"], 4),
                    "baseline": base, "baseline_psnr": round(b["psnr"], 3), "baseline_ssim": round(b["ssim"], 4),
                    "msm_minus_baseline_db": round(m["psnr"] - b["psnr"], 3),
                    "seconds_per_image": round(res["seconds"] / max(n, 1), 3),
                    "nfe_per_image": chosen.nfe, "t0": chosen.t0, "init": chosen.init,
                }
                rows.append(row)
                if not args.quiet:
                    log_line(f"{task:<12} {label:<26} MSM {m['psnr']:6.2f} dB  {base} {b['psnr']:6.2f} dB  ({n} images)")
        seconds = time.perf_counter() - t_start
        step = int(loaded.step)
        lines = header_lines("Natural-image restoration", sys.argv, "cpu") + [
            f"Model: `{ckpt}` (step {step}, {loaded.meta['image_shape'][0]} x {loaded.meta['image_shape'][1]}); "
            f"data: `{folder}`; observation noise {args.noise}; total {seconds / 60:.1f} min.",
            "",
            md_table(
                ["task", "setting", "images", "MSM PSNR / SSIM", "baseline", "baseline PSNR / SSIM", "MSM - baseline (dB)",
                 "s / image", "NFE / image"],
                [[r["task"], r["setting"], r["images"], f"{r['msm_psnr']:.2f} / {r['msm_ssim']:.3f}", r["baseline"],
                  f"{r['baseline_psnr']:.2f} / {r['baseline_ssim']:.3f}", f"{r['msm_minus_baseline_db']:+.2f}",
                  f"{r['seconds_per_image']:.1f}", r["nfe_per_image"]] for r in rows],
            ),
            "",
        ]
        write_results(args.out, "restore", "\n".join(lines), rows)
        return 0

    run_main(body)
    return 0


if __name__ == "__main__":
    main()
