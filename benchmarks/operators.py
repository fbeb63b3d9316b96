"""Time the multi-coil operator: forward + adjoint, 16 coils, 256 x 256.

Prints, side by side: sigpy's Sense, a straightforward torch version with
fftshift/ifftshift, the bare FFT + inverse FFT, and mrimsm's MultiCoilMRI
(shifts folded into a sign pattern; with the column mask only the kept
columns are transformed along the readout, and the 2-D FFT path it replaced
is timed beside it). Target: MultiCoilMRI within
1.3x of the bare FFT. Usage::

    .venv/bin/python -m benchmarks.operators [--coils 16] [--size 256] [--threads 2] [--repeat 30]

On a CPU shared with other jobs, wall-clock time mostly measures the
scheduler: ``--clock process`` times the CPU time of this process instead
(use it with ``--threads 1``). Each operator call allocates 8 MB arrays; glibc
returns them to the system and page-faults them back on every call unless told
otherwise, which costs as much as the arithmetic. For the steady-state figure run
with ``MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

from benchmarks.arguments import base_parser, setup_torch


def _time(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of ``fn``: the best of 3 rounds of ``repeat`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    best = []
    for _ in range(3):
        t0 = clock()
        for _ in range(repeat):
            fn()
        best.append((clock() - t0) / repeat)
    return min(best)


def main(argv: Optional[list[str]] = None) -> None:
    ap = base_parser(__doc__, threads=2, device="cpu")
    ap.add_argument("--coils", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall-clock time, or the CPU time of this process (shared CPUs)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    setup_torch(args)

    import sigpy as sp
    import sigpy.mri

    from mrimsm.physics import MultiCoilMRI

    c, n, dev = args.coils, args.size, args.device
    rng = np.random.default_rng(0)
    maps_np = sigpy.mri.birdcage_maps((c, n, n)).astype(np.complex64)
    x_np = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))).astype(np.complex64)
    mask_np = (rng.random(n) < 0.3).astype(np.float32)

    sense = sp.mri.linop.Sense(maps_np)

    def run_sigpy():
        return sense.H * (sense * x_np * mask_np)

    maps = torch.from_numpy(maps_np)[None].to(dev)
    x = torch.from_numpy(x_np)[None].to(dev)
    mask = torch.from_numpy(mask_np).view(1, 1, 1, n).to(dev)

    def naive():
        k = torch.fft.fftshift(
            torch.fft.fft2(torch.fft.ifftshift(x[:, None] * maps, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
        )
        k = k * mask
        im = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
        return (im * maps.conj()).sum(1)

    y = torch.randn(1, c, n, n, dtype=torch.complex64, device=dev)

    def bare():
        return torch.fft.ifft2(torch.fft.fft2(y, norm="ortho"), norm="ortho")

    op = MultiCoilMRI(maps, mask)

    def ours():
        return op.adjoint(op.forward(x))

    op_full = MultiCoilMRI(maps, mask)
    op_full._cols = None  # the 2-D FFT path (what the column path replaced)

    def ours_full():
        return op_full.adjoint(op_full.forward(x))

    assert torch.allclose(ours(), naive(), atol=1e-4)
    assert torch.allclose(ours_full(), naive(), atol=1e-4)
    sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)

    rows = [
        ("sigpy Sense (numpy)", _time(run_sigpy, args.repeat, clock)),
        ("torch with fftshift/ifftshift", _time(lambda: (naive(), sync()), args.repeat, clock)),
        ("bare FFT + inverse FFT", _time(lambda: (bare(), sync()), args.repeat, clock)),
        ("MultiCoilMRI, 2-D FFT path", _time(lambda: (ours_full(), sync()), args.repeat, clock)),
        ("mrimsm MultiCoilMRI", _time(lambda: (ours(), sync()), args.repeat, clock)),
    ]
    base = rows[2][1]
    print(f"forward + adjoint, {c} coils, {n} x {n}, {args.threads} threads, device {dev}, {args.clock} clock")
    print(f"| {'implementation':<32} | {'ms':>8} | {'x bare FFT':>10} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 12}|")
    for name, t in rows:
        print(f"| {name:<32} | {t * 1e3:8.1f} | {t / base:10.2f} |")
    ratio = rows[4][1] / base
    print(f"target: MultiCoilMRI <= 1.3 x bare FFT -> {'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
