"""Coil compression: the k-space of ``C`` receive coils as ``n < C`` virtual coils.

Per slice, the principal components over coils of the fully sampled centre (ACS)
columns: the calibration data ``X`` (``C x`` rows * ACS columns) gives the ``C x C``
matrix ``X X^H``, whose ``n`` leading eigenvectors ``U`` (``C x n``, orthonormal columns;
the left singular vectors of ``X``) make the virtual coils ``U^H k`` at every k-space
sample. Only acquired columns enter ``X``; ``U^H`` is a fixed linear map over coils, so
masked entries stay zero and white coil noise stays white with the same std. The
compressed k-space goes to ESPIRiT and the methods in place of the original
(``mrimsm recon --coils N``, ``mrimsm prep-fastmri --coils N``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mrimsm.errors import MrimsmError

__all__ = ["calibration_columns", "compression_matrices", "compress_coils", "check_coils", "coils_note",
           "default_coils", "DEFAULT_ABOVE", "DEFAULT_VIRTUAL"]

#: ``recon`` compresses a scan with more than this many coils by default ...
DEFAULT_ABOVE = 16
#: ... to this many virtual coils. Measured (benchmarks/README.md, coil compression) on the
#: real 32-coil radial brain at R = 4: 32 -> 12 kept 99.6 % of the centre's energy, the
#: fastMRI-convention PSNR of zero-filled, SENSE, CS-L1 and MSM within 0.02 dB of no
#: compression, and ESPIRiT 60x faster (0.83 vs 50 s per 256 x 256 slice). Scans with fewer
#: coils are left alone: 13 -> 8 real coils cost up to 0.18 dB for a 1.25-2x speed-up.
DEFAULT_VIRTUAL = 12


def default_coils(num_coils: int) -> Optional[int]:
    """The virtual coils ``recon`` compresses a ``num_coils``-coil scan to when ``--coils``
    is not given: :data:`DEFAULT_VIRTUAL` above :data:`DEFAULT_ABOVE` coils, else ``None``
    (no compression)."""
    return DEFAULT_VIRTUAL if int(num_coils) > DEFAULT_ABOVE else None


def check_coils(n: object, flag: str = "--coils") -> Optional[int]:
    """``n`` as a number of virtual coils (``None`` stays ``None``: no compression);
    one-line MrimsmError unless it is an integer >= 1."""
    if n is None:
        return None
    try:
        text = str(n).strip()
        value = int(text)
    except (TypeError, ValueError):
        raise MrimsmError(f"{flag} must be an integer >= 1, got {n!r}") from None
    if value < 1:
        raise MrimsmError(f"{flag} must be an integer >= 1, got {n!r}")
    return value


def coils_note(n: Optional[int], num_coils: int, name: str = "", flag: str = "--coils",
               default: bool = False) -> Optional[str]:
    """The one-line note for an ``n`` that compresses nothing (``n >= num_coils``), or for
    the default compression (``default``: ``n`` from :func:`default_coils`), else ``None``."""
    where = f"{name} has" if name else "the scan has"
    if default and n is not None and n < num_coils:
        return (f"{where} {num_coils} coils: compressed to {n} virtual coils, the default above "
                f"{DEFAULT_ABOVE} coils ({flag} {num_coils} keeps them all)")
    if n is None or n < num_coils:
        return None
    return f"{flag} {n}: {where} {num_coils} coils; no coil compression"


def calibration_columns(mask_row: np.ndarray) -> np.ndarray:
    """The columns of one slice's mask that calibrate the compression: the contiguous
    run of acquired columns around the centre ``W // 2`` (the ACS), or every acquired
    column when the centre column was not acquired. ``(k,)`` int indices."""
    m = np.asarray(mask_row, dtype=bool).reshape(-1)
    width = m.shape[0]
    c = width // 2
    if not m[c]:
        return np.flatnonzero(m)
    left, right = c, c + 1
    while left > 0 and m[left - 1]:
        left -= 1
    while right < width and m[right]:
        right += 1
    return np.arange(left, right)


def compression_matrices(kspace: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, the ``(n, C)`` compression matrix ``U^H`` and the share of the
    calibration energy the ``n`` virtual coils keep.

    Args:
        kspace: ``(S, C, H, W)`` complex k-space (masked or not: only acquired
            calibration columns are read, :func:`calibration_columns`).
        mask: ``(S, W)`` (or ``(W,)``) bool, the acquired columns of each slice.
        n: virtual coils, ``1 <= n <= C``.

    Returns:
        ``(S, n, C)`` complex64 matrices with orthonormal rows, ordered by energy, each
        row's phase fixed (its largest entry real and positive) so the result is a
        deterministic function of the data; ``(S,)`` float64 energy shares in ``[0, 1]``.
    """
    s, c = kspace.shape[:2]
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), (s, kspace.shape[-1]))
    if not 1 <= n <= c:
        raise MrimsmError(f"--coils must be between 1 and the {c} coils of the scan, got {n}")
    mats = np.zeros((s, n, c), dtype=np.complex64)
    kept = np.ones(s, dtype=np.float64)
    for i in range(s):
        cols = calibration_columns(mask[i])
        if cols.size == 0:
            raise MrimsmError("a slice's mask acquires no column: nothing to calibrate the coil compression on")
        x = np.asarray(kspace[i][:, :, cols], dtype=np.complex128).reshape(c, -1)
        cov = x @ x.conj().T
        vals, vecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
        u = vecs[:, :n]
        big = np.argmax(np.abs(u), axis=0)
        phase = u[big, np.arange(n)]
        u = u * (np.abs(phase) / np.where(phase == 0, 1, phase))[None, :]
        mats[i] = u.conj().T.astype(np.complex64)
        total = vals.sum()
        kept[i] = float(vals[:n].sum() / total) if total > 0 else 1.0
    return mats, kept


def compress_coils(kspace: np.ndarray, mask: np.ndarray, n: Optional[int], kept: Optional[list] = None) -> np.ndarray:
    """``(S, C, H, W)`` k-space -> ``(S, n, H, W)`` complex64: the ``n`` strongest virtual
    coils of each slice (:func:`compression_matrices`, calibrated on the acquired centre
    columns of ``mask`` ``(S, W)`` bool). ``n`` ``None`` or ``>= C``: the k-space unchanged
    (as complex64); ``n < 1``: MrimsmError. ``kept``: a list the ``(S,)`` energy shares are
    appended to when something is compressed."""
    if n is None:
        return np.asarray(kspace, dtype=np.complex64)
    n = check_coils(n)
    c = kspace.shape[1]
    if n >= c:
        return np.asarray(kspace, dtype=np.complex64)
    mats, shares = compression_matrices(kspace, mask, n)
    if kept is not None:
        kept.append(shares)
    s, _, h, w = kspace.shape
    out = np.empty((s, n, h, w), dtype=np.complex64)
    for i in range(s):
        out[i] = (mats[i] @ np.asarray(kspace[i], dtype=np.complex64).reshape(c, -1)).reshape(n, h, w)
    return out
