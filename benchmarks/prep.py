"""prep-fastmri speed: slices per second at 256 x 256 with 16 coils, and ESPIRiT
against sigpy's ``EspiritCalib`` and BART's ``ecalib`` on the same slices.

    .venv/bin/python -m benchmarks.prep                   # 4 slices, all methods
    .venv/bin/python -m benchmarks.prep --slices 8 --threads 1 --no-sigpy
    .venv/bin/python -m benchmarks.prep --size 64 --coils 8      # the tiny training data

Slices are simulated from held-out MNI152 slices (16 birdcage coils, noise 0.01,
readout oversampled by 2, as fastMRI brain data). Timed per slice (median):

* ``prep (full pipeline)``: :func:`mrimsm.data.prep.prepare_training_volume` with its
  defaults (crop, R = 4 paper mask, normalization, ESPIRiT from the 20 ACS
  columns with a 24 x 20 block, auto coarse grid);
* ESPIRiT alone on fully sampled k-space, 24 x 24 calibration, kernel 6,
  threshold 0.02, crop 0.95: ours exact, ours on coarse grids (every
  ``size // 64``-th and ``size // 32``-th pixel), sigpy
  ``EspiritCalib``, and ``bart ecalib -r 24 -k 6 -t 0.02 -c 0.95 -m 1`` (if the
  ``bart`` binary is on PATH; Debian: ``apt-get install bart``), with
  ``OMP_NUM_THREADS`` set to the same thread count. BART's time includes writing
  and reading its ``.cfl`` files and starting the process.

Agreement with sigpy's / BART's maps is reported as the PSNR of the
coil-combined magnitude image inside both supports (phase conventions differ
between tools) and the fraction of our support the other tool keeps (BART scales
its eigenvalues differently, so the same ``-c 0.95`` crops more).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from benchmarks.arguments import base_parser, setup_torch


def write_cfl(stem: Path, arr: np.ndarray) -> None:
    """BART's format: text header of dims + column-major complex64."""
    dims = list(arr.shape) + [1] * (16 - arr.ndim)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    np.asarray(arr, dtype=np.complex64).ravel(order="F").tofile(stem.with_suffix(".cfl"))


def read_cfl(stem: Path) -> np.ndarray:
    """An array from BART's ``.hdr`` / ``.cfl`` pair (trailing singleton dimensions dropped)."""
    dims = [int(d) for d in stem.with_suffix(".hdr").read_text().split("\n")[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return np.fromfile(stem.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


def bart_ecalib(kspace: np.ndarray, threads: int, tmp: Path) -> np.ndarray:
    """``(C, H, W)`` -> ``(C, H, W)`` maps from ``bart ecalib``."""
    write_cfl(tmp / "k", np.transpose(kspace, (1, 2, 0))[:, :, None, :])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(["bart", "ecalib", "-r", "24", "-k", "6", "-t", "0.02", "-c", "0.95", "-m", "1",
                    str(tmp / "k"), str(tmp / "m")], check=True, capture_output=True, env=env)
    maps = read_cfl(tmp / "m").reshape(kspace.shape[1], kspace.shape[2], -1)
    return np.transpose(maps, (2, 0, 1))


def combined_psnr(kspace: np.ndarray, maps_a: np.ndarray, maps_b: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) of the coil-combined magnitude images inside both maps' support,
    and the fraction of ``maps_a``'s support that ``maps_b`` also covers."""
    from mrimsm.data.fastmri_io import coil_images

    img = coil_images(kspace)
    a = np.abs((np.conj(maps_a) * img).sum(0))
    b = np.abs((np.conj(maps_b) * img).sum(0))
    in_a, in_b = np.abs(maps_a).sum(0) > 0, np.abs(maps_b).sum(0) > 0
    both = in_a & in_b
    psnr = float(10 * np.log10(b[both].max() ** 2 / np.mean((a[both] - b[both]) ** 2)))
    return psnr, float(both.sum() / max(in_a.sum(), 1))


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Median seconds of ``reps`` calls of ``fn``, and its last result."""
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv: Optional[list[str]] = None) -> None:
    p = base_parser(__doc__, threads=2, threads_help="torch / BART threads (default %(default)s)")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--no-sigpy", action="store_true", help="skip sigpy's EspiritCalib (slow)")
    args = p.parse_args(argv)
    setup_torch(args)
    from mrimsm.data import simulate as sm
    from mrimsm.data.espirit import estimate_maps
    from mrimsm.data.prep import PrepOptions, prepare_training_volume, to_target_kspace

    held = sm.mni_split_indices("axial", "heldout", step=1)[: args.slices]
    images = sm.mni_slices("axial", held, args.size)
    raw = np.stack([sm.simulate_multicoil(im, args.coils, 0.01, True, seed=i)["kspace"] for i, im in enumerate(images)])
    full = to_target_kspace(raw, (args.size, args.size), args.size)
    n = len(held)
    print(f"{n} slices, {args.size} x {args.size}, {args.coils} coils, {args.threads} threads")

    coarse = sorted({max(1, args.size // 64), max(1, args.size // 32)} - {1})
    estimate_maps(full[0], coarse=coarse[-1] if coarse else 1)  # warm-up (torch kernels, allocations)
    rows = []
    t, _ = timed(lambda: prepare_training_volume(raw, (args.size, args.size), list(range(n)), "bench.h5",
                                                 PrepOptions(size=args.size)), 1)
    rows.append(("prep (full pipeline, defaults)", t / n, None))
    per = {}
    variants = [("ESPIRiT ours, exact", dict(coarse=1))] + [(f"ESPIRiT ours, coarse {c}", dict(coarse=c)) for c in coarse]
    for label, kw in variants:
        t, maps = timed(lambda kw=kw: np.stack([estimate_maps(k, **kw) for k in full]), 1)
        per[label] = maps
        rows.append((label, t / n, None))
    exact = per["ESPIRiT ours, exact"]
    for i, (label, sec, _) in enumerate(rows):
        if label in per and label != "ESPIRiT ours, exact":
            rel = np.linalg.norm(per[label] - exact) / np.linalg.norm(exact)
            rows[i] = (label, sec, f"rel. diff to exact {rel:.1e}")
    if not args.no_sigpy:
        t, sig = timed(lambda: np.stack([estimate_maps(k, backend="sigpy") for k in full]), 1)
        psnr, cover = np.mean([combined_psnr(full[i], exact[i], sig[i]) for i in range(n)], axis=0)
        rows.append(("ESPIRiT sigpy EspiritCalib", t / n, f"ours vs sigpy {psnr:.1f} dB, support {cover:.3f}"))
    bart_time = None
    if shutil.which("bart"):
        with tempfile.TemporaryDirectory() as tmp:
            bart_ecalib(full[0], args.threads, Path(tmp))  # warm-up
            t, bm = timed(lambda: np.stack([bart_ecalib(k, args.threads, Path(tmp)) for k in full]), 1)
        bart_time = t / n
        psnr, cover = np.mean([combined_psnr(full[i], exact[i], bm[i]) for i in range(n)], axis=0)
        rows.append(("ESPIRiT BART ecalib", bart_time, f"ours vs BART {psnr:.1f} dB, support {cover:.3f}"))
    else:
        print("bart not found on PATH: no BART timing (Debian: apt-get install bart)")

    print(f"\n| what | s / slice | slices / s | x BART | note |\n|---|---|---|---|---|")
    for label, sec, note in rows:
        ratio = f"{sec / bart_time:.2f}" if bart_time else "-"
        print(f"| {label} | {sec:.3f} | {1 / sec:.2f} | {ratio} | {note or ''} |")


if __name__ == "__main__":
    main()
