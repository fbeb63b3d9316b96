"""Real raw multi-coil k-space as a fastMRI multi-coil file (see data_scripts/README.md,
"Real raw k-space").

    python data_scripts/real_raw.py OUT_DIR [--cache DIR]

Reads ``pyqmri-1.3.0/test/VFA_cart_smalltest.h5`` from the pyqmri 1.3.0 source archive
(Apache-2.0), fetched on demand with ``pip download --no-deps --no-binary pyqmri`` into
``$MRIMSM_CACHE/downloads`` (default ``~/.cache/mrimsm/downloads``; an archive already there
is used as it is; no package is installed or imported). The file holds one axial brain slice,
13 coils, fully sampled Cartesian 224 x 224, at ten flip angles. It becomes
``OUT_DIR/pyqmri_vfa_cart.h5``: ``kspace`` (10, 13, 224, 224), the ten flip angles as ten
slices, in fastMRI's centred convention; ``reconstruction_rss`` (10, 224, 224); an ISMRMRD
header with the matrix and an assumed 1 mm pixel (the file states no field of view).

The source stores k-space with the DC sample at [0, 0] and its image is ``ifft2(k)``, the
object in the middle of the array: the source's own ``images`` dataset is
``sum_c conj(Coils_c) * ifft2(k_c)`` (correlation 1 - 2e-14), while ``fftshift(ifft2(k))``
puts the brain into the four corners. fastMRI's image is ``fftshift(ifft2(ifftshift(k_c)))``,
so ``k_c = fftshift(fft2(ifftshift(ifft2(k))))``: for even sides ``fftshift(k * (-1)^(m+n))``,
the source's samples moved and sign-flipped, never resampled (:func:`corner_to_centred`).
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

ARCHIVE = Archive("pyqmri", "1.3.0", "pyqmri-1.3.0.tar.gz", sdist=True)
MEMBER = "pyqmri-1.3.0/test/VFA_cart_smalltest.h5"
OUTPUT_NAME = "pyqmri_vfa_cart.h5"
LICENCE = "Apache-2.0 (pyqmri)"
#: The source states the matrix but no field of view: a stated guess.
PIXEL_MM_ASSUMED = 1.0
#: (flip angles, coils, 1, rows, columns) as the source stores it.
SOURCE_SHAPE = (10, 13, 1, 224, 224)


def corner_to_centred(kspace: np.ndarray) -> np.ndarray:
    """k-space with the DC sample at index 0 of the last two axes and the image ``ifft2(k)``
    (pyqmri's convention) -> fastMRI's centred convention (DC at ``N // 2``, image
    ``fftshift(ifft2(ifftshift(k_c)))``, the same image): ``k_c = fftshift(fft2(ifftshift(
    ifft2(k))))``. For even sides that is exactly ``fftshift(k * (-1)^(m+n))`` (what this
    returns: the samples moved and sign-flipped); odd sides go through the FFTs."""
    k = np.asarray(kspace)
    h, w = k.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        sign = np.where((np.add.outer(np.arange(h), np.arange(w)) % 2) == 0, 1, -1).astype(np.int8)
        return np.fft.fftshift(k * sign, axes=(-2, -1))
    img = np.fft.ifftshift(np.fft.ifft2(k, axes=(-2, -1)), axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(img, axes=(-2, -1)), axes=(-2, -1)).astype(k.dtype)


def source_kspace(real: np.ndarray, imag: np.ndarray) -> np.ndarray:
    """``real_dat`` + 1j * ``imag_dat`` of shape (F, C, 1, H, W) -> centred
    ``(F, C, H, W)`` complex64: the flip angles become slices."""
    real, imag = np.asarray(real), np.asarray(imag)
    if real.shape != imag.shape or real.ndim != 5 or real.shape[2] != 1:
        raise MrimsmError(f"expected real_dat and imag_dat of shape (angles, coils, 1, H, W), "
                          f"got {real.shape} and {imag.shape}")
    k = (real[:, :, 0] + 1j * imag[:, :, 0]).astype(np.complex64)
    return np.ascontiguousarray(corner_to_centred(k))


def read_source(data: bytes) -> dict:
    """The HDF5 member's bytes -> ``{"kspace": (F, C, H, W) centred complex64,
    "flip_angles_deg": [...], "tr_ms": float or None}``."""
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        for key in ("real_dat", "imag_dat"):
            if key not in f:
                raise MrimsmError(f"{MEMBER}: no dataset {key}")
        kspace = source_kspace(f["real_dat"][()], f["imag_dat"][()])
        fa = f.attrs.get("flip_angle(s)", f.attrs.get("fa"))
        tr = f.attrs.get("TR")
    angles = [] if fa is None else [round(float(np.degrees(a)), 3) for a in np.ravel(fa)]
    return {"kspace": kspace, "flip_angles_deg": angles,
            "tr_ms": None if tr is None else float(np.ravel(tr)[0])}


def write_file(path: Path, source: dict) -> Path:
    """Write the fastMRI multi-coil file: k-space, ``reconstruction_rss`` (no readout
    oversampling here, so the full grid), the header (matrix, 1 mm assumed) and the
    provenance as attrs; validated by reading it back."""
    attrs = {
        "acquisition": "AXFLASH_VFA",
        "patient_id": "pyqmri_vfa_cart_smalltest",
        "source": f"{ARCHIVE.package} {ARCHIVE.version} sdist, {MEMBER}",
        "licence": LICENCE,
        "slices_are": "flip angles",
        "flip_angles_deg": np.asarray(source["flip_angles_deg"], dtype=np.float64),
        "pixel_mm_assumed": PIXEL_MM_ASSUMED,
    }
    if source.get("tr_ms") is not None:
        attrs["tr_ms"] = source["tr_ms"]
    return write_single_source_file(path, source["kspace"], attrs, PIXEL_MM_ASSUMED)


def build(out_dir, cache: Optional[str] = None) -> Path:
    """Fetch (if needed), read and write ``OUT_DIR/pyqmri_vfa_cart.h5``."""
    out = Path(out_dir) / OUTPUT_NAME
    source = read_source(fetch_member(ARCHIVE, MEMBER, out, cache))
    if source["kspace"].shape != SOURCE_SHAPE[:2] + SOURCE_SHAPE[3:]:
        raise MrimsmError(f"{MEMBER}: k-space of shape {source['kspace'].shape}, expected {SOURCE_SHAPE}")
    return write_file(out, source)


def main(argv: Optional[list[str]] = None) -> int:
    return single_file_main(__doc__, OUTPUT_NAME, build, argv)


if __name__ == "__main__":
    sys.exit(main())
