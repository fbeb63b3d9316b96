"""Read, validate and write fastMRI multi-coil HDF5 files.

The layout is exactly the one fastMRI ships (multi-coil brain/knee files)::

    kspace               (S, C, H, W) complex64   H = readout (oversampled by 2 in brain data)
    reconstruction_rss   (S, h, w)    float32     optional; root-sum-of-squares reference,
                                                  image-domain centre crop of the coil images
    mask                 (W,)         bool        optional; only in undersampled (test) files
    ismrmrd_header       scalar bytes             optional; ISMRMRD XML
    attrs: acquisition (str), max (float), norm (float), patient_id (str), ...

Reconstructions are written in fastMRI's submission layout: a dataset
``reconstruction`` (S, h, w) float32 at the size of ``reconstruction_rss``, on
the same intensity scale, so that ``fastmri.evaluate`` can score them.

Every bad input raises :class:`mrimsm.errors.MrimsmError` with a one-line
message naming the file.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import h5py
import numpy as np

from mrimsm.errors import MrimsmError
from mrimsm.limits import check_memory
from mrimsm.utils import atomic_path

__all__ = [
    "encoded_region",
    "MultiCoilFile",
    "FileLockedError",
    "open_hdf5",
    "read_multicoil",
    "read_header",
    "write_reconstruction",
    "crop_to_reconstruction",
    "rss",
    "coil_images",
    "recon_size_from_header",
    "pixel_size_from_header",
    "slice_thickness_from_header",
    "encoded_columns",
]

_ATTR_KEYS = ("acquisition", "max", "norm", "patient_id")


@dataclass
class MultiCoilFile:
    """A fastMRI multi-coil file in memory.

    Attributes:
        kspace: ``(S, C, H, W)`` complex64 (the selected slices); ``C = 1`` for a
            single-coil file, whose ``(S, H, W)`` k-space gains the coil axis.
        mask: ``(W,)`` bool, the file's own sampling mask if it is already
            undersampled, else ``None``.
        reconstruction_rss: ``(S, h, w)`` float32 reference, or ``None``.
        attrs: the file's HDF5 attributes (``acquisition``, ``max``, ``norm``,
            ``patient_id``, ... where present), as plain Python values.
        ismrmrd_header: raw XML bytes, or ``None``.
        path: where it was read from.
        slices: indices (into the file) of the slices held in ``kspace``.
        num_slices_in_file: the file's total number of slices.
        single_coil: the file is fastMRI's single-coil layout (``kspace`` ``(S, H, W)``,
            reference ``reconstruction_esc``).
        reconstruction_esc: ``(S, h, w)`` float32 reference of a single-coil file, or ``None``.
    """

    kspace: np.ndarray
    mask: Optional[np.ndarray]
    reconstruction_rss: Optional[np.ndarray]
    attrs: dict
    ismrmrd_header: Optional[bytes]
    path: Path
    slices: list = field(default_factory=list)
    num_slices_in_file: int = 0
    single_coil: bool = False
    reconstruction_esc: Optional[np.ndarray] = None

    @property
    def num_coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def reference(self) -> Optional[np.ndarray]:
        """``(S, h, w)`` float32: ``reconstruction_esc`` of a single-coil file,
        ``reconstruction_rss`` of a multi-coil one, or ``None``."""
        return self.reconstruction_esc if self.single_coil else self.reconstruction_rss

    @property
    def reference_name(self) -> str:
        """The dataset :attr:`reference` comes from."""
        return "reconstruction_esc" if self.single_coil else "reconstruction_rss"

    @property
    def recon_size(self) -> tuple[int, int]:
        """``(h, w)`` of the reference image (:attr:`reference`'s size),
        else the header's ``reconSpace`` matrix, else the k-space size."""
        if self.reference is not None:
            return tuple(int(s) for s in self.reference.shape[-2:])
        from_header = recon_size_from_header(self.ismrmrd_header)
        if from_header is not None:
            return from_header
        return tuple(int(s) for s in self.kspace.shape[-2:])

    @property
    def pixel_mm(self) -> Optional[tuple[float, float]]:
        """``(rows, columns)`` pixel size in mm from the header (:func:`pixel_size_from_header`),
        or ``None`` when the header does not state it."""
        return pixel_size_from_header(self.ismrmrd_header)


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class FileLockedError(MrimsmError):
    """An HDF5 file another process holds open for writing (HDF5 file locking): the
    file is not at fault, so callers that skip bad inputs stop on this one instead."""


def locked_message(path: str | os.PathLike) -> str:
    """The one-line message for a file that HDF5's file locking keeps us from opening."""
    return (f"{path}: locked by another process (HDF5 file locking); wait for it, or set "
            f"HDF5_USE_FILE_LOCKING=FALSE if the file system does not support locks")


def is_lock_error(exc: BaseException) -> bool:
    """Whether an ``OSError`` from h5py means the file is locked by another process
    (HDF5 reports ``unable to lock file, errno = 11``: EAGAIN, 'Resource temporarily
    unavailable'), not that it is damaged."""
    text = str(exc).lower()
    return isinstance(exc, BlockingIOError) or "unable to lock file" in text or (
        getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) and "lock" in text)


def open_hdf5(path: str | os.PathLike, mode: str = "r", what: str = "HDF5 file") -> h5py.File:
    """Open an HDF5 file; every failure is one :class:`MrimsmError` line naming ``path``.

    The one place mrimsm opens HDF5 files for reading (fastMRI files, prepared shards).
    A missing file, a directory, a file that is not HDF5 and a truncated or corrupt one
    each say so (``what`` names the kind of file, e.g. ``"shard"``); a file locked by a
    writer in another process raises :class:`FileLockedError` (:func:`locked_message`).
    """
    path = Path(path)
    if mode == "r":
        if not path.exists():
            raise MrimsmError(f"no such file: {path}")
        if path.is_dir():
            raise MrimsmError(f"expected an HDF5 file, got a directory: {path}")
        try:
            is_h5 = h5py.is_hdf5(str(path))
        except OSError as exc:  # unreadable (permissions, ...)
            if is_lock_error(exc):
                raise FileLockedError(locked_message(path)) from None
            raise MrimsmError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not is_h5:
            raise MrimsmError(f"not an HDF5 file: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if is_lock_error(exc):
            raise FileLockedError(locked_message(path)) from None
        if mode != "r" and isinstance(exc, (PermissionError, FileNotFoundError)):
            raise MrimsmError(f"cannot open {path}: {exc.strerror or exc}") from None
        raise MrimsmError(f"truncated or corrupt {what}: {path}") from None


def _check_kspace_meta(ds: Any, path: Path, single_coil: bool = False) -> None:
    """Shape and dtype checks of a ``kspace`` dataset: ``(S, C, H, W)`` complex, or with
    ``single_coil`` also fastMRI's single-coil ``(S, H, W)``."""
    if not isinstance(ds, h5py.Dataset):
        raise MrimsmError(f"'kspace' in {path} is not a dataset")
    if ds.ndim == 3 and not single_coil:
        raise MrimsmError(
            f"single-coil file given to a multi-coil command: kspace in {path} has shape "
            f"{tuple(ds.shape)} (slices, H, W); expected (slices, coils, H, W)"
        )
    if ds.ndim not in ((3, 4) if single_coil else (4,)):
        expected = "3 dims (slices, H, W) or 4 dims (slices, coils, H, W)" if single_coil else (
            "4 dims (slices, coils, H, W)")
        raise MrimsmError(f"kspace in {path} must have {expected}, got shape {tuple(ds.shape)}")
    if not np.issubdtype(ds.dtype, np.complexfloating):
        raise MrimsmError(f"kspace in {path} must be complex, got dtype {ds.dtype}")
    if ds.ndim == 4 and ds.shape[1] == 0:
        raise MrimsmError(f"kspace in {path} has zero coils")
    if 0 in (ds.shape[0], ds.shape[-2], ds.shape[-1]):
        raise MrimsmError(f"kspace in {path} is empty: shape {tuple(ds.shape)}")


def _kspace_dataset(f: "h5py.File", path: Path, single_coil: bool = False):
    """The file's ``kspace`` dataset after the shape/dtype checks (no data read)."""
    if "kspace" not in f:
        raise MrimsmError(f"no 'kspace' dataset in {path}")
    ds = f["kspace"]
    _check_kspace_meta(ds, path, single_coil)
    return ds


def kspace_read_bytes(ds: Any, num_slices: int) -> int:
    """Bytes that reading ``num_slices`` slices of the ``kspace`` dataset ``ds`` takes in
    memory: the slices as stored, plus their complex64 copy when stored otherwise (what
    :func:`read_multicoil` returns). Known from the shape alone, before any read: a chunked
    dataset that was never written is a few KB on disk however large its shape."""
    per_slice = int(np.prod([int(s) for s in ds.shape[1:]], dtype=np.float64))
    itemsize = int(ds.dtype.itemsize)
    return num_slices * per_slice * (itemsize + (0 if ds.dtype == np.complex64 else 8))


def read_header(path: str | os.PathLike, single_coil: bool = False) -> dict:
    """Validate a file's structure without loading k-space.

    Args:
        path: the ``.h5`` file.
        single_coil: also accept fastMRI's single-coil layout (``kspace`` ``(S, H, W)``,
            reference ``reconstruction_esc``); its shape is reported with one coil.

    Returns:
        ``{"shape": (S, C, H, W), "attrs": dict, "has_mask": bool,
        "has_rss": bool, "recon_size": (h, w), "single_coil": bool}`` (``has_rss``: the
        file has its reference, ``reconstruction_esc`` for a single-coil file).

    Raises:
        MrimsmError: not HDF5, truncated, missing ``kspace``, wrong rank,
        non-complex dtype, zero coils.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        try:
            ds = _kspace_dataset(f, path, single_coil)
            is_single = ds.ndim == 3
            ref_name = "reconstruction_esc" if is_single else "reconstruction_rss"
            header = bytes(f["ismrmrd_header"][()]) if "ismrmrd_header" in f else None
            ref_shape = tuple(f[ref_name].shape) if ref_name in f else None
            shape = tuple(int(s) for s in ds.shape)
            out = {
                "shape": (shape[0], 1, *shape[1:]) if is_single else shape,
                "attrs": {k: _plain(v) for k, v in f.attrs.items()},
                "has_mask": "mask" in f,
                "has_rss": ref_shape is not None,
                "single_coil": is_single,
            }
        except (OSError, KeyError, RuntimeError):
            raise MrimsmError(f"truncated or corrupt HDF5 file: {path}") from None
    if ref_shape is not None and len(ref_shape) == 3:
        out["recon_size"] = ref_shape[-2:]
    else:
        out["recon_size"] = recon_size_from_header(header) or out["shape"][-2:]
    return out


def _read_mask(f: "h5py.File", path: Path, width: int) -> Optional[np.ndarray]:
    """The file's ``mask`` as ``(W,)`` bool, or ``None``; MrimsmError when malformed."""
    if "mask" not in f:
        return None
    raw_mask = np.asarray(f["mask"][()])
    if raw_mask.dtype.kind not in "biuf" or (raw_mask.dtype.kind != "b" and not np.isin(raw_mask, (0, 1)).all()):
        raise MrimsmError(f"'mask' in {path} must hold 0/1 (or booleans), got {raw_mask.dtype} values")
    mask = raw_mask.astype(bool).reshape(-1)
    if mask.shape != (width,):
        raise MrimsmError(f"'mask' in {path} has shape {mask.shape}, expected ({width},)")
    return mask


def _read_reference(f: "h5py.File", name: str, path: Path, n_total: int,
                    sel: Optional[list]) -> Optional[np.ndarray]:
    """``(S, h, w)`` float32 reference ``name`` of the slices ``sel`` (``None``: all),
    or ``None`` when the file has none; MrimsmError for a wrong shape."""
    if name not in f:
        return None
    r = f[name]
    if r.ndim != 3 or r.shape[0] != n_total:
        raise MrimsmError(f"'{name}' in {path} has shape {tuple(r.shape)}, expected ({n_total}, h, w)")
    return (r[()] if sel is None else np.stack([r[i] for i in sel]) if sel else r[0:0]).astype(np.float32)


def read_multicoil(
    path: str | os.PathLike,
    slices: Optional[Sequence[int]] = None,
    check_finite: bool = True,
    single_coil: bool = False,
) -> MultiCoilFile:
    """Read and validate a fastMRI multi-coil file.

    Args:
        path: the ``.h5`` file.
        slices: optional slice indices to load (default: all).
        check_finite: reject NaN / Inf in the loaded k-space.
        single_coil: also accept fastMRI's single-coil layout: ``kspace`` ``(S, H, W)``
            is read as one coil ``(S, 1, H, W)``, with ``reconstruction_esc`` as the reference.

    Returns:
        :class:`MultiCoilFile` with ``kspace`` ``(S, C, H, W)`` complex64.

    Raises:
        MrimsmError: for a missing file, a non-HDF5 or truncated file, a missing
        ``kspace``, a wrong rank (a single-coil file unless ``single_coil``), a non-complex
        dtype, zero coils, NaN / Inf values, or malformed ``mask`` / reference.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        try:
            ds = _kspace_dataset(f, path, single_coil)
            is_single = ds.ndim == 3
            n_total, w = ds.shape[0], ds.shape[-1]
            sel = list(range(n_total)) if slices is None else [int(i) for i in slices]
            bad = [i for i in sel if not 0 <= i < n_total]
            if bad:
                raise MrimsmError(f"slice {bad[0]} out of range for {path} ({n_total} slices)")
            check_memory(kspace_read_bytes(ds, len(sel)), f"reading kspace {tuple(ds.shape)} of {path}")
            kspace = ds[()] if slices is None else (np.stack([ds[i] for i in sel]) if sel else ds[0:0])
            if is_single:
                kspace = kspace[:, None]
            mask = _read_mask(f, path, w)
            subset = None if slices is None else sel
            rss_ref = None if is_single else _read_reference(f, "reconstruction_rss", path, n_total, subset)
            esc_ref = _read_reference(f, "reconstruction_esc", path, n_total, subset) if is_single else None
            header = bytes(f["ismrmrd_header"][()]) if "ismrmrd_header" in f else None
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
        except (OSError, KeyError, RuntimeError):
            raise MrimsmError(f"truncated or corrupt HDF5 file: {path}") from None
    kspace = np.ascontiguousarray(kspace, dtype=np.complex64)
    if check_finite and not np.isfinite(kspace.view(np.float32)).all():
        raise MrimsmError(f"kspace in {path} contains NaN or Inf values")
    for name, ref in (("reconstruction_rss", rss_ref), ("reconstruction_esc", esc_ref)):
        if ref is not None and check_finite and not np.isfinite(ref).all():
            raise MrimsmError(f"{name} in {path} contains NaN or Inf values")
    return MultiCoilFile(
        kspace=kspace,
        mask=mask,
        reconstruction_rss=rss_ref,
        attrs=attrs,
        ismrmrd_header=header,
        path=path,
        slices=sel,
        num_slices_in_file=int(n_total),
        single_coil=is_single,
        reconstruction_esc=esc_ref,
    )


_ISMRMRD_NS = {"i": "http://www.ismrm.org/ISMRMRD"}


def _encoding_element(header: Optional[bytes], name: str):
    """The ISMRMRD XML's ``encoding/<name>`` element, or ``None`` (no header,
    unreadable XML, no such element)."""
    if not header:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(header)
    except ET.ParseError:
        return None
    return root.find(f".//i:encoding/i:{name}", _ISMRMRD_NS)


def _recon_space(header: Optional[bytes]):
    """The ISMRMRD XML's ``encoding/reconSpace`` element, or ``None``."""
    return _encoding_element(header, "reconSpace")


def encoded_columns(header: Optional[bytes], width: int) -> Optional[tuple[int, int]]:
    """``(left, right)``: the k-space columns ``left:right`` the scanner encoded, from the
    ISMRMRD header's phase-encode limits, as fastMRI's loaders compute them
    (``left = encodedSpace y // 2 - kspace_encoding_step_1 center``,
    ``right = left + maximum + 1``); the columns outside are zero padding (fastMRI knee files).

    ``None`` when the header states no such limits, when its encoded matrix is not
    ``width`` columns wide, or when the limits fall outside ``0..width`` (then every
    column is taken as encoded).
    """
    limits = _encoding_element(header, "encodingLimits")
    space = _encoding_element(header, "encodedSpace")
    if limits is None or space is None:
        return None
    try:
        step = limits.find("i:kspace_encoding_step_1", _ISMRMRD_NS)
        center = int(step.find("i:center", _ISMRMRD_NS).text)
        maximum = int(step.find("i:maximum", _ISMRMRD_NS).text)
        enc_width = int(space.find("i:matrixSize/i:y", _ISMRMRD_NS).text)
    except (AttributeError, TypeError, ValueError):
        return None
    if enc_width != int(width):
        return None
    left = enc_width // 2 - center
    right = left + maximum + 1
    if not 0 <= left < right <= width:
        return None
    return left, right


def encoded_region(data: MultiCoilFile) -> Optional[tuple]:
    """``(left, right)``: the columns of ``data`` that were encoded, when fewer than all.

    The header's phase-encode limits (:func:`mrimsm.data.fastmri_io.encoded_columns`); for
    a fully sampled file also narrowed to the columns that hold data, so that all-zero edge
    columns (zero padding a header does not state) are found too. ``None``: every column.
    """
    width = int(data.kspace.shape[-1])
    left, right = encoded_columns(data.ismrmrd_header, width) or (0, width)
    if data.mask is None or data.mask.all():
        holds = np.zeros(width, dtype=bool)
        for one in data.kspace:
            holds |= (one != 0).any(axis=(0, 1))
        filled = np.flatnonzero(holds)
        if len(filled):
            left, right = max(left, int(filled[0])), min(right, int(filled[-1]) + 1)
    return None if (left, right) == (0, width) or left >= right else (left, right)


def _xy(space, field: str, kind: type) -> Optional[list]:
    """``[x, y]`` of ``<field>`` under a reconSpace element as ``kind``, or ``None`` when
    the element or the field is missing or malformed."""
    if space is None:
        return None
    try:
        return [kind(space.find(f"i:{field}/i:{a}", _ISMRMRD_NS).text) for a in ("x", "y")]
    except (AttributeError, TypeError, ValueError):
        return None


def recon_size_from_header(header: Optional[bytes]) -> Optional[tuple[int, int]]:
    """``(h, w)`` from the ISMRMRD XML's ``encoding/reconSpace/matrixSize``
    (``x`` = readout = rows, ``y`` = phase encode = columns), or ``None`` (also for a
    size that is not positive, e.g. 0 x 0: the k-space size is used instead)."""
    size = _xy(_recon_space(header), "matrixSize", int)
    return None if size is None or min(size) < 1 else (size[0], size[1])


def pixel_size_from_header(header: Optional[bytes]) -> Optional[tuple[float, float]]:
    """``(rows, columns)`` pixel size in mm: the ISMRMRD XML's ``encoding/reconSpace``
    field of view over its matrix size (``x`` = readout = rows, ``y`` = columns), or
    ``None`` when a field is missing, unreadable or not positive. The reconstruction is
    an image-domain crop of the k-space grid, so its pixels are those of the whole matrix."""
    space = _recon_space(header)
    fov, size = _xy(space, "fieldOfView_mm", float), _xy(space, "matrixSize", int)
    if fov is None or size is None:
        return None
    if min(fov) <= 0 or min(size) <= 0 or not all(np.isfinite(fov)):
        return None
    return fov[0] / size[0], fov[1] / size[1]


def slice_thickness_from_header(header: Optional[bytes]) -> Optional[float]:
    """The slice thickness in mm: the ISMRMRD XML's ``encoding/reconSpace`` field of view
    ``z`` over its matrix size ``z`` (1 when the matrix states no ``z``: a 2-D scan's field of
    view ``z`` is its slice thickness), or ``None`` when the header states no positive
    finite ``z`` field of view. The header holds no slice gap, so this is the thickness,
    not necessarily the distance between slice centres."""
    space = _recon_space(header)
    if space is None:
        return None
    try:
        fov = float(space.find("i:fieldOfView_mm/i:z", _ISMRMRD_NS).text)
    except (AttributeError, TypeError, ValueError):
        return None
    try:
        size = int(space.find("i:matrixSize/i:z", _ISMRMRD_NS).text)
    except (AttributeError, TypeError, ValueError):
        size = 1
    if not np.isfinite(fov) or fov <= 0:
        return None
    return fov / max(size, 1)


def crop_to_reconstruction(images: np.ndarray, target_hw: Sequence[int]) -> np.ndarray:
    """Image-domain centre crop of the last two dims, fastMRI's convention
    (start ``(H - h) // 2``).

    Args:
        images: ``(..., H, W)`` any dtype.
        target_hw: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        ``(..., h, w)`` view of ``images``.
    """
    h, w = int(target_hw[0]), int(target_hw[1])
    big_h, big_w = images.shape[-2:]
    if h > big_h or w > big_w:
        raise MrimsmError(f"cannot crop images of size {big_h}x{big_w} to {h}x{w}")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return images[..., top : top + h, left : left + w]


def coil_images(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT of the last two dims (numpy).

    ``(..., H, W)`` complex64 k-space -> ``(..., H, W)`` complex64 images.
    """
    x = np.fft.ifftshift(kspace, axes=(-2, -1))
    x = np.fft.ifft2(x, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(x, axes=(-2, -1)).astype(np.complex64)


def rss(kspace: np.ndarray, target_hw: Optional[Sequence[int]] = None) -> np.ndarray:
    """Root-sum-of-squares image as fastMRI computes ``reconstruction_rss``.

    Args:
        kspace: ``(S, C, H, W)`` complex64.
        target_hw: optional ``(h, w)`` centre crop (removes readout oversampling).

    Returns:
        ``(S, h, w)`` float32.
    """
    img = coil_images(kspace)
    if target_hw is not None:
        img = crop_to_reconstruction(img, target_hw)
    return np.sqrt((np.abs(img) ** 2).sum(axis=-3)).astype(np.float32)


def write_reconstruction(
    path: str | os.PathLike,
    reconstruction: np.ndarray,
    attrs: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, np.ndarray]] = None,
) -> Path:
    """Write a reconstruction in fastMRI's layout, atomically.

    Args:
        path: output ``.h5``; appears all at once (temp file + rename).
        reconstruction: ``(S, h, w)`` real (magnitude) volume, stored float32
            as dataset ``reconstruction``.
        attrs: HDF5 attributes to store (e.g. the input's ``max``, ``norm``,
            ``acquisition``, ``patient_id``); ``None`` values are skipped.
        extra: further datasets (e.g. ``{"std": ...}`` for an uncertainty map).

    Returns:
        The output path.
    """
    rec = np.asarray(reconstruction)
    if rec.ndim != 3:
        raise MrimsmError(f"reconstruction must be (slices, H, W), got shape {rec.shape}")
    if np.iscomplexobj(rec):
        raise MrimsmError("reconstruction must be a real (magnitude) volume, got complex data")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=rec.astype(np.float32))
            for key, value in (extra or {}).items():
                if key == "reconstruction":
                    raise MrimsmError("extra dataset may not be named 'reconstruction'")
                f.create_dataset(key, data=np.asarray(value))
            for key, value in (attrs or {}).items():
                if value is not None:
                    f.attrs[key] = value
    return path
