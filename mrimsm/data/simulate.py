"""Multi-coil k-space simulated from real MR images, written as fastMRI files.

No raw fastMRI data is reachable offline, so tests, demos and the tiny training
config use k-space simulated from the MNI152 ICBM 2009a T1 template (1 mm,
197 x 233 x 189) that the nilearn wheel ships inside its package directory.
The file is located with ``importlib.util.find_spec`` (nilearn is never
imported) and read with nibabel. Source, licence and the train / held-out slice
split are documented in ``data_scripts/README.md`` and :data:`MNI_SPLIT`.

Forward model of :func:`simulate_multicoil` (all arrays complex64)::

    x      = image * exp(i * phase)                 smooth random phase, max |x| = max(image)
    x_pad  = zero-pad x to (2h, w) if oversample_readout (the FOV doubles along the readout)
    kspace = fft2c(maps * x_pad) + noise            noise: complex Gaussian, std noise_std
                                                    per real component, on every entry

``maps`` are birdcage sensitivities (``sigpy.mri.birdcage_maps``) normalized so
that ``sum_c |C_c|^2 = 1`` at every pixel. Because the FFT is orthonormal,
``noise_std`` is in the units of the image: with images in [0, 1] it is the
per-component noise of the (cropped) orthonormal k-space, the same units as the
prep pipeline's rho.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import h5py
import numpy as np

from mrimsm.errors import MrimsmError
from mrimsm.utils import atomic_path

__all__ = [
    "MNI_FILE",
    "MNI_SPLIT",
    "ORIENTATIONS",
    "DEFAULT_SAMPLE_NOISE",
    "mni_path",
    "mni_volume",
    "PIXEL_MODES",
    "upright_slice",
    "mni_slices",
    "mni_pixel_mm",
    "mni_split_indices",
    "smooth_phase",
    "birdcage_coil_maps",
    "simulate_multicoil",
    "ismrmrd_header_xml",
    "write_fastmri_file",
    "simulate_images_file",
    "simulate_volume_file",
    "simulated_raw_jobs",
    "write_simulated_raw",
    "make_sample_file",
]

MNI_FILE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

ORIENTATIONS = ("axial", "coronal", "sagittal")

#: Whole slice ranges of the MNI volume (indices along the orientation's axis:
#: sagittal = x (0..196), coronal = y (0..232), axial = z (0..188)).
#: ``usable``: slices with enough brain; ``heldout``: kept for evaluation only;
#: ``guard``: slices on each side of the held-out range used by neither split,
#: so no training slice is a near-copy of a held-out one (1 mm apart).
MNI_SPLIT: dict[str, dict] = {
    "axial": {"usable": (20, 140), "heldout": (72, 88), "guard": 4},
    "coronal": {"usable": (40, 196), "heldout": (110, 126), "guard": 4},
    "sagittal": {"usable": (34, 162), "heldout": (60, 76), "guard": 4},
}

#: Noise of the demo sample: per-component k-space std for images in [0, 1]
#: (about 5 % background in the RSS image with 16 coils, as in fastMRI brain scans).
DEFAULT_SAMPLE_NOISE = 0.01

_ACQ_PREFIX = {"axial": "AX", "coronal": "COR", "sagittal": "SAG"}


def mni_path() -> Path:
    """Path of the MNI152 T1 volume inside the installed nilearn package
    (located without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MrimsmError(
            "the MNI152 template needs the nilearn package: pip install --no-deps nilearn"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MNI_FILE
    if not path.exists():
        raise MrimsmError(f"MNI152 template not found in the nilearn package: {path}")
    return path


@functools.lru_cache(maxsize=1)
def mni_volume() -> np.ndarray:
    """The MNI152 T1 volume ``(197, 233, 189)`` float32 in [0, 1] (x, y, z), read-only."""
    import nibabel as nib

    vol = np.asarray(nib.load(str(mni_path())).dataobj, dtype=np.float32) / 255.0
    vol.setflags(write=False)
    return vol


def _orient_axis(orientation: str) -> int:
    try:
        return {"sagittal": 0, "coronal": 1, "axial": 2}[orientation]
    except KeyError:
        raise MrimsmError(f"unknown orientation {orientation!r}; use axial, coronal or sagittal") from None


def upright_slice(vol: np.ndarray, orientation: str, index: int) -> np.ndarray:
    """One 2-D slice of an ``(x, y, z)`` volume in RAS order (the MNI volume; any NIfTI
    volume after ``nibabel.as_closest_canonical``), upright: anterior (axial) or superior
    (coronal, sagittal) at the top."""
    if orientation == "axial":  # (x, y) -> rows: anterior at the top
        return vol[:, :, index].T[::-1]
    if orientation == "coronal":  # (x, z) -> rows: superior at the top
        return vol[:, index, :].T[::-1]
    return vol[index, :, :].T[::-1]  # sagittal (y, z)


#: How MNI slices become ``size x size`` images: ``fit`` resizes the whole
#: 233 mm field of view to ``size`` pixels (the 64 x 64 demo data); ``native``
#: keeps the template's 1 mm pixels and zero-pads (or centre-crops) to ``size``
#: (the 256 x 256 prior: brain anatomy at the pixel scale of real scans).
PIXEL_MODES = ("fit", "native")


def mni_pixel_mm(size: int, pixel: str = "fit", scale: float = 1.0) -> float:
    """Pixel size in mm of :func:`mni_slices` ``(..., size, pixel, scale)``: ``1 / scale``
    for native pixels (the template's are 1 mm), ``233 / size`` for ``fit`` (the volume's
    largest side squeezed into ``size``: 3.64 mm at 64)."""
    if pixel == "native":
        return 1.0 / float(scale)
    return float(max(_mni_shape())) / int(size)


@functools.lru_cache(maxsize=1)
def _mni_shape() -> tuple:
    """The MNI volume's shape from its header alone (``recon`` asks for a model's training
    pixels; reading the 35 MB volume for that would be wasted)."""
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(mni_path())).shape)


def _pad_or_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Centre zero-pad / centre-crop a 2-D array to ``size x size``."""
    out = np.zeros((size, size), dtype=np.float32)
    h, w = img.shape
    sh, sw = max(0, (h - size) // 2), max(0, (w - size) // 2)  # crop offsets in the source
    dh, dw = max(0, (size - h) // 2), max(0, (size - w) // 2)  # pad offsets in the output
    ch, cw = min(h, size), min(w, size)
    out[dh : dh + ch, dw : dw + cw] = img[sh : sh + ch, sw : sw + cw]
    return out


def mni_slices(orientation: str, indices: Sequence[int], size: int, pixel: str = "fit",
               scale: float = 1.0) -> np.ndarray:
    """Slices of the MNI152 T1 template as ``size x size`` images.

    ``pixel="fit"``: each slice is zero-padded to a 233 x 233 square (the
    volume's largest side, so all orientations share one pixel size) and
    resized with anti-aliasing. ``pixel="native"``: the slice keeps its 1 mm
    pixels and is centre zero-padded (or cropped) to ``size`` (no resampling),
    unless ``scale`` differs from 1: then the slice is first resampled by ``scale``
    (anti-aliased, linear), i.e. to pixels of ``1 / scale`` mm. Real scans differ in
    field of view and resolution (fastMRI brain: about 0.7 mm pixels), and the averaged
    template is smoother than one person's anatomy: resampled by ``scale < 1`` it packs
    more detail into each pixel. A prior meant for many scans can see several scales.

    Args:
        orientation: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: slice indices along the orientation's axis.
        size: output side.
        pixel: ``"fit"`` or ``"native"`` (:data:`PIXEL_MODES`).
        scale: ``pixel="native"`` only: resampling factor (> 0; 1 keeps 1 mm pixels).

    Returns:
        ``(N, size, size)`` float32, values in about [0, 1].
    """
    if pixel not in PIXEL_MODES:
        raise MrimsmError(f"unknown pixel mode {pixel!r}; use fit or native")
    if not scale > 0 or (pixel != "native" and scale != 1.0):
        raise MrimsmError(f"scale {scale!r} needs pixel native and a value > 0")
    axis = _orient_axis(orientation)
    vol = mni_volume()
    side = max(vol.shape)
    out = np.empty((len(indices), size, size), dtype=np.float32)
    for k, idx in enumerate(indices):
        if not 0 <= int(idx) < vol.shape[axis]:
            raise MrimsmError(f"{orientation} slice {idx} out of range 0..{vol.shape[axis] - 1}")
        sl = upright_slice(vol, orientation, int(idx))
        if pixel == "native":
            sl = np.ascontiguousarray(sl, dtype=np.float32)
            if scale != 1.0:
                from skimage.transform import rescale

                sl = rescale(sl, scale, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
            out[k] = _pad_or_crop(sl, size)
            continue
        from skimage.transform import resize

        sq = np.zeros((side, side), dtype=np.float32)
        top, left = (side - sl.shape[0]) // 2, (side - sl.shape[1]) // 2
        sq[top : top + sl.shape[0], left : left + sl.shape[1]] = sl
        out[k] = resize(sq, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, None)


def mni_split_indices(orientation: str, split: str = "train", step: int = 2) -> list[int]:
    """Slice indices of one split of :data:`MNI_SPLIT`.

    Args:
        orientation: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        split: ``"train"`` (usable range minus the held-out range and its guard
            bands) or ``"heldout"``.
        step: take every ``step``-th slice.

    Returns:
        Sorted slice indices.
    """
    _orient_axis(orientation)
    spec = MNI_SPLIT[orientation]
    lo, hi = spec["usable"]
    h_lo, h_hi = spec["heldout"]
    if split == "heldout":
        return list(range(h_lo, h_hi, step))
    if split == "train":
        g = spec["guard"]
        return [i for i in range(lo, hi, step) if not (h_lo - g <= i < h_hi + g)]
    raise MrimsmError(f"unknown split {split!r}; use train or heldout")


def smooth_phase(shape: Sequence[int], rng: np.random.Generator, max_phase: float = np.pi) -> np.ndarray:
    """A smooth random phase map (quadratic polynomial), ``(H, W)`` float32 radians,
    with ``|phase| <= max_phase``."""
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = np.stack([np.ones_like(xx), xx, yy, xx * yy, xx**2, yy**2])
    coef = rng.uniform(-1.0, 1.0, size=len(terms))
    phase = np.tensordot(coef, terms, axes=1)
    peak = np.abs(phase).max()
    return (phase / peak * max_phase * rng.uniform(0.3, 1.0)).astype(np.float32)


def birdcage_coil_maps(num_coils: int, shape: Sequence[int], object_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Birdcage sensitivities normalized to ``sum_c |C_c|^2 = 1`` everywhere.

    The coil ring (radius 1.5 object half-widths) is placed relative to the
    object (``object_shape``, default ``shape``), so a readout-oversampled grid
    sees the same coils as a plain one.

    Args:
        num_coils: number of coils.
        shape: ``(H, W)`` grid of the returned maps (centred on the object).
        object_shape: ``(h, w)`` extent of the object.

    Returns:
        ``(C, H, W)`` complex64.
    """
    import sigpy.mri

    h_out, w_out = int(shape[0]), int(shape[1])
    h_obj, w_obj = (int(object_shape[0]), int(object_shape[1])) if object_shape else (h_out, w_out)
    # sigpy scales coordinates by half the grid: on a grid twice the object,
    # r = 0.75 puts the ring at 1.5 object half-widths (nudged so that no coil
    # sits exactly on a grid point, where sigpy's 1 / r would divide by zero).
    big_h, big_w = 2 * h_obj, 2 * w_obj
    if h_out > big_h or w_out > big_w:
        raise MrimsmError(f"map grid {h_out}x{w_out} larger than twice the object {h_obj}x{w_obj}")
    maps = sigpy.mri.birdcage_maps((num_coils, big_h, big_w), r=0.7503, dtype=np.complex64)
    top, left = (big_h - h_out) // 2, (big_w - w_out) // 2
    maps = maps[:, top : top + h_out, left : left + w_out]
    maps = maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return maps.astype(np.complex64)


def _fft2c(x: np.ndarray) -> np.ndarray:
    y = np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(y, axes=(-2, -1))


def simulate_multicoil(
    image: np.ndarray,
    num_coils: int = 8,
    noise_std: float = 0.0,
    oversample_readout: bool = False,
    seed: int = 0,
    phase: bool = True,
    columns: Optional[int] = None,
) -> dict:
    """Simulate one multi-coil acquisition of an image.

    Args:
        image: ``(h, w)`` real or complex.
        num_coils: number of birdcage coils.
        noise_std: std of each real component of the complex Gaussian noise
            added to every k-space entry (image units; see the module doc).
        oversample_readout: zero-pad the image to ``(2h, w)`` first, as fastMRI
            brain data is oversampled by 2 along the readout (rows).
        seed: seeds the phase map and the noise.
        phase: multiply a real image by a smooth random phase.
        columns: zero-pad the image's columns to this many (``>= w``) first:
            phase-encode oversampling, as in fastMRI brain files of 768 x 396
            (``None``: ``w``). The reference stays ``(h, w)``.

    Returns:
        dict with ``kspace`` ``(C, H', W)`` complex64 (``H' = 2h`` or ``h``,
        ``W = columns or w``), ``maps`` ``(C, H', W)`` complex64, ``image``
        ``(H', W)`` complex64 (the
        noiseless object on the k-space grid), ``reconstruction_rss`` ``(h, w)``
        float32 (RSS of the noisy k-space, centre-cropped as fastMRI does).
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise MrimsmError(f"image must be 2-D (H, W), got shape {img.shape}")
    if num_coils < 1:
        raise MrimsmError(f"num_coils must be >= 1, got {num_coils}")
    rng = np.random.default_rng(seed)
    h, w = img.shape
    x = img.astype(np.complex64)
    if phase and not np.iscomplexobj(img):
        x = x * np.exp(1j * smooth_phase((h, w), rng)).astype(np.complex64)
    grid_h = 2 * h if oversample_readout else h
    grid_w = w if columns is None else int(columns)
    if grid_w < w:
        raise MrimsmError(f"columns ({grid_w}) must be at least the image width ({w})")
    x_full = np.zeros((grid_h, grid_w), dtype=np.complex64)
    top, left = (grid_h - h) // 2, (grid_w - w) // 2
    x_full[top : top + h, left : left + w] = x
    maps = birdcage_coil_maps(num_coils, (grid_h, grid_w), object_shape=(h, w))
    kspace = _fft2c(maps * x_full[None]).astype(np.complex64)
    if noise_std > 0:
        noise = rng.standard_normal((2,) + kspace.shape).astype(np.float32) * np.float32(noise_std)
        kspace = kspace + (noise[0] + 1j * noise[1]).astype(np.complex64)
    from mrimsm.data.fastmri_io import rss

    return {
        "kspace": kspace,
        "maps": maps,
        "image": x_full,
        "reconstruction_rss": rss(kspace[None], (h, w))[0],
    }


def ismrmrd_header_xml(
    kspace_hw: Sequence[int], recon_hw: Sequence[int], num_coils: int, fov_mm: Sequence[float] = (220.0, 220.0),
    thickness_mm: float = 5.0, patient_id: str = "simulated",
    encoded: Optional[Sequence[int]] = None,
) -> bytes:
    """A minimal ISMRMRD header with the fields fastMRI's loaders read:
    encoded / recon matrix sizes (``x`` = readout rows, ``y`` = columns), fields of view
    and the phase-encode limits (centre ``W // 2``). ``fov_mm``: the field of view of the
    reconstruction's rows and of all ``W`` columns, so pixels are ``fov_mm[0] / h`` by
    ``fov_mm[1] / W`` mm (:func:`mrimsm.data.fastmri_io.pixel_size_from_header`).
    ``thickness_mm``: the slice thickness (the fields of view's ``z``). ``encoded``:
    ``(left, right)``, only the columns ``left:right`` were encoded (the others are zero
    padding, as in fastMRI's knee files), written as fastMRI's loaders read it back
    (:func:`mrimsm.data.fastmri_io.encoded_columns`); ``None``: all ``W``."""
    from xml.sax.saxutils import escape

    fz = float(thickness_mm)
    H, W = int(kspace_hw[0]), int(kspace_hw[1])
    h, w = int(recon_hw[0]), int(recon_hw[1])
    fx, fy = float(fov_mm[0]), float(fov_mm[1])
    left, right = (0, W) if encoded is None else (int(encoded[0]), int(encoded[1]))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation><receiverChannels>{num_coils}</receiverChannels></acquisitionSystemInformation>
  <encoding>
    <encodedSpace><matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx * H / h:.1f}</x><y>{fy:.1f}</y><z>{fz:.1f}</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx:.1f}</x><y>{fy * w / W:.1f}</y><z>{fz:.1f}</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{right - left - 1}</maximum><center>{W // 2 - left}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
  <subjectInformation><patientID>{escape(patient_id)}</patientID></subjectInformation>
</ismrmrdHeader>
""".encode()


def write_fastmri_file(
    path: str | os.PathLike,
    kspace: np.ndarray,
    reconstruction_rss: Optional[np.ndarray] = None,
    attrs: Optional[Mapping] = None,
    mask: Optional[np.ndarray] = None,
    header: Optional[bytes] = None,
    recon_size: Optional[Sequence[int]] = None,
    pixel_mm: Optional[float] = None,
) -> Path:
    """Write a fastMRI multi-coil file atomically.

    Args:
        path: output ``.h5``.
        kspace: ``(S, C, H, W)`` complex (stored complex64).
        reconstruction_rss: ``(S, h, w)`` float32, or ``None``. ``max`` and
            ``norm`` attrs default to its max and L2 norm, as in fastMRI.
        attrs: ``acquisition``, ``patient_id``, ... (merged over the defaults).
        mask: optional ``(W,)`` bool for an undersampled file (k-space should
            already be zero off the mask).
        header: ISMRMRD XML; by default :func:`ismrmrd_header_xml`.
        recon_size: ``(h, w)`` for the default header's ``reconSpace`` when there
            is no ``reconstruction_rss`` (default: the k-space size).
        pixel_mm: the default header's pixel size (its fields of view follow from it);
            ``None``: a 220 mm field of view, whatever the matrix.

    Returns:
        The path.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 4:
        raise MrimsmError(f"kspace must be (slices, coils, H, W), got shape {kspace.shape}")
    s, c, H, W = kspace.shape
    if reconstruction_rss is not None:
        recon_hw = reconstruction_rss.shape[-2:]
    else:
        recon_hw = tuple(recon_size) if recon_size is not None else (H, W)
    full_attrs: dict = {"acquisition": "AXT2", "patient_id": hashlib.sha1(str(path).encode()).hexdigest()[:16]}
    if reconstruction_rss is not None:
        full_attrs["max"] = float(np.max(reconstruction_rss))
        full_attrs["norm"] = float(np.linalg.norm(reconstruction_rss))
    full_attrs.update(attrs or {})
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=kspace.astype(np.complex64))
            if reconstruction_rss is not None:
                f.create_dataset("reconstruction_rss", data=np.asarray(reconstruction_rss, dtype=np.float32))
            if mask is not None:
                f.create_dataset("mask", data=np.asarray(mask).astype(bool).reshape(-1))
            fov = {} if pixel_mm is None else {"fov_mm": (float(pixel_mm) * recon_hw[0], float(pixel_mm) * W)}
            f.create_dataset("ismrmrd_header", data=np.bytes_(header or ismrmrd_header_xml((H, W), recon_hw, c, **fov)))
            for key, value in full_attrs.items():
                f.attrs[key] = value
    return Path(path)


def simulate_volume_file(
    path: str | os.PathLike,
    orientation: str,
    indices: Sequence[int],
    size: int = 64,
    num_coils: int = 16,
    noise_std: float = DEFAULT_SAMPLE_NOISE,
    oversample_readout: bool = True,
    seed: int = 0,
    pixel: str = "fit",
    scale: float = 1.0,
    columns: Optional[int] = None,
) -> Path:
    """Simulate MNI slices as one fastMRI multi-coil "volume" file (``pixel``, ``scale``:
    see :func:`mni_slices`; ``columns``: phase-encode oversampling, see
    :func:`simulate_multicoil`) with :func:`simulate_images_file`.

    Slice ``k`` uses seed ``seed * 1000 + k`` for its phase and noise, so a file
    is a deterministic function of its arguments.

    Returns:
        The path. The file holds ``kspace`` ``(S, C, 2*size or size, columns or size)``,
        ``reconstruction_rss`` ``(S, size, size)``, ``ismrmrd_header`` and attrs
        ``acquisition`` (e.g. ``AXT1``: the template is T1-weighted), ``max``,
        ``norm``, ``patient_id``.
    """
    images = mni_slices(orientation, indices, size, pixel, scale)
    attrs = {
        "acquisition": f"{_ACQ_PREFIX[orientation]}T1",
        "patient_id": f"mni152-{orientation}-{indices[0]}-{indices[-1]}-s{seed}",
        "simulated_from": f"MNI152 ICBM2009a T1 {orientation} slices {list(map(int, indices))}"
                          + (("" if pixel != "native" else " at native 1 mm pixels" if scale == 1.0
                             else f" at {1 / scale:.3g} mm pixels (resampled by {scale:g})")),
    }
    return simulate_images_file(path, images, attrs, num_coils, noise_std, oversample_readout, seed,
                                pixel_mm=mni_pixel_mm(size, pixel, scale), columns=columns)


def simulate_images_file(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    attrs: Mapping,
    num_coils: int = 16,
    noise_std: float = DEFAULT_SAMPLE_NOISE,
    oversample_readout: bool = True,
    seed: int = 0,
    pixel_mm: Optional[float] = None,
    columns: Optional[int] = None,
) -> Path:
    """Simulate 2-D images (:func:`simulate_multicoil`) as one fastMRI multi-coil "volume".

    Image ``k`` uses seed ``seed * 1000 + k`` for its phase and noise, so a file is a
    deterministic function of its arguments. ``attrs`` (``acquisition``, ``patient_id``,
    ``simulated_from``, ...) are written with ``noise_std`` added; ``pixel_mm`` sets the
    header's fields of view (:func:`write_fastmri_file`).

    Returns:
        The path.
    """
    sims = [
        simulate_multicoil(im, num_coils, noise_std, oversample_readout, seed=seed * 1000 + k, columns=columns)
        for k, im in enumerate(images)
    ]
    if not sims:
        raise MrimsmError(f"no images to write to {path}")
    kspace = np.stack([s["kspace"] for s in sims])
    ref = np.stack([s["reconstruction_rss"] for s in sims])
    return write_fastmri_file(path, kspace, ref, {**attrs, "noise_std": float(noise_std)}, pixel_mm=pixel_mm)


def simulated_raw_jobs(
    raw_dir: str | os.PathLike,
    split: str = "train",
    size: int = 64,
    num_coils: int = 16,
    noise_std: float = DEFAULT_SAMPLE_NOISE,
    slices_per_file: int = 8,
    step: int = 2,
    seed: int = 0,
    oversample_readout: bool = True,
    pixel: str = "fit",
    scales: Sequence[float] = (1.0,),
) -> list[tuple]:
    """The files :func:`write_simulated_raw` writes, as :func:`simulate_volume_file`
    argument tuples ``(path, orientation, indices, size, num_coils, noise_std,
    oversample_readout, seed, pixel, scale)`` in file order (nothing is written)."""
    if slices_per_file < 1 or step < 1:
        raise MrimsmError("slices_per_file and step must be >= 1")
    scales = [float(x) for x in scales]
    if not scales or len(set(scales)) != len(scales):
        raise MrimsmError(f"scales must be distinct and not empty, got {scales}")
    raw_dir = Path(raw_dir)
    jobs = []
    for k, scale in enumerate(scales):
        tag = "" if k == 0 else f"_x{scale:g}"
        for o_i, orientation in enumerate(ORIENTATIONS):
            idx = mni_split_indices(orientation, split, step=step)
            for v, start in enumerate(range(0, len(idx), slices_per_file)):
                chunk = idx[start : start + slices_per_file]
                path = raw_dir / f"mni_{orientation}_{chunk[0]:03d}-{chunk[-1]:03d}{tag}.h5"
                jobs.append((path, orientation, chunk, size, num_coils, noise_std, oversample_readout,
                             seed * 100 + o_i * 20 + v + 10000 * k, pixel, scale))
    return jobs


def write_simulated_raw(
    raw_dir: str | os.PathLike,
    split: str = "train",
    size: int = 64,
    num_coils: int = 16,
    noise_std: float = DEFAULT_SAMPLE_NOISE,
    slices_per_file: int = 8,
    step: int = 2,
    seed: int = 0,
    oversample_readout: bool = True,
    pixel: str = "fit",
    scales: Sequence[float] = (1.0,),
    workers: int = 1,
) -> list[Path]:
    """Write one split of the MNI slices as fastMRI multi-coil "volumes".

    Every orientation's slices (:func:`mni_split_indices` with ``step``) are cut
    into files of ``slices_per_file`` consecutive slices, named
    ``mni_<orientation>_<first>-<last>.h5``; file ``v`` of orientation ``o`` uses
    seed ``seed * 100 + 20 * o + v``. With ``pixel="native"``, each of ``scales``
    (see :func:`mni_slices`) writes its own files; the scale at position ``k >= 1`` of the list adds
    ``_x<scale>`` to the name and ``10000 * k`` to the seed, so the files of the
    first scale are those written without ``scales``. ``workers`` > 1 writes the files
    in that many processes (the files do not depend on it). The file list is
    :func:`simulated_raw_jobs`.

    Returns:
        The written paths, in order.
    """
    jobs = simulated_raw_jobs(raw_dir, split, size, num_coils, noise_std, slices_per_file, step, seed,
                              oversample_readout, pixel, scales)
    from mrimsm.workers import process_map

    return process_map(_simulate_job, jobs, int(workers))


def _simulate_job(job: tuple) -> Path:
    """:func:`simulate_volume_file` on one argument tuple (a picklable worker entry)."""
    return simulate_volume_file(*job)


def make_sample_file(
    path: str | os.PathLike,
    num_slices: int = 4,
    size: int = 64,
    num_coils: int = 16,
    noise_std: float = DEFAULT_SAMPLE_NOISE,
    seed: int = 0,
) -> Path:
    """The deterministic demo sample: ``num_slices`` held-out axial MNI slices
    (every other slice from the middle of the held-out range), ``size x size``
    images, ``num_coils`` coils, readout oversampled by 2, realistic noise.

    The default file has ``kspace`` ``(4, 16, 128, 64)`` complex64 and
    ``reconstruction_rss`` ``(4, 64, 64)`` float32.
    """
    held = mni_split_indices("axial", "heldout", step=2)
    if not 1 <= num_slices <= len(held):
        raise MrimsmError(f"num_slices must be in 1..{len(held)}, got {num_slices}")
    start = (len(held) - num_slices) // 2
    return simulate_volume_file(
        path, "axial", held[start : start + num_slices], size, num_coils, noise_std, True, seed
    )
