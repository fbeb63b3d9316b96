"""One input file made ready for the methods: readout crop, masks (the file's own or
seeded retrospective ones), ESPIRiT coil maps and the normalization scale."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from mrimsm.data.fastmri_io import encoded_region
from mrimsm.data.espirit import CALIB_ROWS, MIN_CALIB_COLUMNS  # noqa: F401 (re-exported by mrimsm.recon)
from mrimsm.errors import MrimsmError
from mrimsm.recon.progress import Progress, open_bar
from mrimsm.settings import check_field
from mrimsm.solver_settings import ReconSettings

if TYPE_CHECKING:
    from mrimsm.data.fastmri_io import MultiCoilFile

def _shift_fft_1d(x: np.ndarray, axis: int, inverse: bool) -> np.ndarray:
    x = np.fft.ifftshift(x, axes=axis)
    x = (np.fft.ifft if inverse else np.fft.fft)(x, axis=axis, norm="ortho")
    return np.fft.fftshift(x, axes=axis)


def crop_readout(kspace: np.ndarray, height: int) -> np.ndarray:
    """Remove readout oversampling: ``(..., H, W)`` -> ``(..., height, W)`` complex64.

    Centred orthonormal 1-D IFFT along H, image-domain centre crop of the rows
    (start ``(H - height) // 2``, fastMRI's convention), FFT back. The result's
    ``ifft2c`` equals the centre rows of the input's ``ifft2c`` on the same
    intensity scale, and sampled/unsampled columns stay as they were.
    """
    big = kspace.shape[-2]
    if height == big:
        return np.asarray(kspace, dtype=np.complex64)
    if height > big:
        raise MrimsmError(f"reference height {height} is larger than the k-space readout {big}")
    img = _shift_fft_1d(kspace, -2, inverse=True)
    top = (big - height) // 2
    img = img[..., top : top + height, :]
    return _shift_fft_1d(img, -2, inverse=False).astype(np.complex64)


def volume_scale(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray) -> float:
    """The divisor that scales a volume as the training data was scaled: the peak
    of the ACS-only root-sum-of-squares image (:func:`mrimsm.data.normalization.volume_peak`,
    the estimator prep-fastmri uses), so that learned methods see images peaking near 1.

    Args:
        kspace: ``(S, C, H, W)`` complex64 masked k-space.
        mask: ``(S, W)`` bool.
        maps: ``(S, C, H, W)`` complex64 (unused; kept for a stable signature).
    """
    from mrimsm.data.normalization import volume_peak

    peak = volume_peak(kspace, np.asarray(mask).reshape(len(kspace), -1))
    return peak if peak > 0 and math.isfinite(peak) else 1.0


@dataclass
class PreparedVolume:
    """One file made ready for the methods (shared by all methods of a run).

    Attributes:
        path: the input file.
        kspace: ``(S, C, h, W)`` complex64 masked k-space, readout oversampling removed.
        mask: ``(S, W)`` bool, the mask of each slice.
        maps: ``(S, C, h, W)`` complex64 ESPIRiT maps.
        reference: ``(S, h, w)`` float32 ``reconstruction_rss`` (``reconstruction_esc`` of a
            single-coil file) or ``None``.
        recon_size: ``(h, w)`` of the output.
        zero_filled: ``(S, h, w)`` float32 magnitude of ``A^H y`` (for figures).
        slices: slice indices in the file.
        attrs: the input's HDF5 attributes.
        mask_source: ``"file"`` (the file's own mask) or ``"random"`` (retrospective).
        accel: the requested acceleration (``None`` when the file's mask is used).
        achieved_accel: encoded columns (``W`` unless :attr:`encoded` says otherwise) over
            the mean number of sampled columns.
        seed: the base seed.
        scale: :func:`volume_scale`, the divisor for methods that need normalized input.
        maps_seconds: wall time of the coil-map estimation.
        pixel_mm: ``(rows, columns)`` pixel size in mm from the file's header, or ``None``.
        noise_std: the scan's k-space noise std per real component, in the file's units,
            measured on its acquired columns (:func:`mrimsm.data.noise.estimate_noise_std`);
            ``noise_std / scale`` in normalized units.
        slice_mm: the slice thickness in mm from the file's header (``reconSpace``
            field of view ``z`` over its matrix ``z``), or ``None``.
        file_coils: the file's number of coils (``kspace`` holds fewer after ``--coils``).
        coils: the virtual coils asked for, or the default's
            (:func:`mrimsm.data.coil_compression.default_coils`); ``None``: no compression.
        coils_default: ``coils`` is the default's (no ``--coils`` given).
        coil_energy_kept: the smallest share, over slices, of the calibration energy the
            virtual coils keep (:func:`mrimsm.data.coil_compression.compression_matrices`),
            or ``None`` when nothing was compressed.
        compress_seconds: wall time of the coil compression.
        single_coil: the file is fastMRI's single-coil layout; its coil map is the identity
            on the object's support (:func:`_single_coil_maps`), not ESPIRiT's.
        encoded: ``(left, right)`` when only the columns ``left:right`` were encoded (the
            others are zero padding: never sampled, not counted in R), else ``None``.
        reference_name: the dataset :attr:`reference` comes from.
    """

    path: Path
    kspace: np.ndarray
    mask: np.ndarray
    maps: np.ndarray
    reference: Optional[np.ndarray]
    recon_size: tuple
    zero_filled: np.ndarray
    slices: list
    attrs: dict
    mask_source: str
    accel: Optional[float]
    achieved_accel: float
    seed: int
    scale: float = 1.0
    maps_seconds: float = 0.0
    pixel_mm: Optional[tuple] = None
    noise_std: Optional[float] = None
    slice_mm: Optional[float] = None
    file_coils: int = 0
    coils: Optional[int] = None
    coils_default: bool = False
    coil_energy_kept: Optional[float] = None
    compress_seconds: float = 0.0
    single_coil: bool = False
    encoded: Optional[tuple] = None
    reference_name: str = "reconstruction_rss"


#: Fewest fully sampled centre columns of a retrospective mask (ESPIRiT calibrates on
#: them). fastMRI's fractions give 15+ at 256 columns but only 4 at 64 columns and R = 6;
#: measured on simulated 64 x 64 MNI volumes at R = 6 (``cs`` PSNR, sample / 3 tuning
#: volumes): 21.3 / 22.4 dB with 4 centre columns, 23.5 / 23.9 dB with 8.
MIN_CENTER_COLUMNS = 8

def _retrospective_masks(
    name: str, slices: Sequence[int], width: int, accel: float, seed: int, center_fraction: Optional[float],
    encoded: Optional[tuple] = None,
) -> np.ndarray:
    """``(S, W)`` bool: ``RandomCartesian(accel)`` drawn with ``seed_for(name, slice, seed)``.

    With ``encoded = (left, right)`` (zero-padded edge columns) the same rule runs on the
    encoded columns only (:func:`mrimsm.physics.masks.mask_on_encoded_columns`, prep-fastmri's
    rule too): ``round(n / R)`` of the ``n = right - left`` encoded columns are kept,
    ``round(n * center_fraction)`` of them at the k-space centre (column ``W // 2``, where
    fastMRI puts it however the padding is split), the rest drawn uniformly among the other
    encoded columns; padded columns are never sampled.
    """
    from mrimsm.physics.masks import cartesian_family, fastmri_center_fraction, mask_on_encoded_columns, seed_for

    n_enc = width if encoded is None else int(encoded[1] - encoded[0])
    cf = (fastmri_center_fraction(accel, n_enc, MIN_CENTER_COLUMNS) if center_fraction is None
          else check_field(ReconSettings, "center_fraction", center_fraction, "--center-fraction"))
    try:
        family = cartesian_family("random", accel, center_fraction=cf)
        return np.stack([mask_on_encoded_columns(family, (1, width), encoded, seed_for(name, int(s), seed))
                         for s in slices])
    except ValueError as exc:  # too much acceleration for the matrix once the centre is kept
        raise MrimsmError(str(exc)) from None


def _volume_masks(data: "MultiCoilFile", accel: Optional[float], seed: int, center_fraction: Optional[float],
                  encoded: Optional[tuple]) -> tuple:
    """``(mask (S, W) bool, source, accel)``: the file's own mask (``source "file"``, accel
    ``None``) or seeded retrospective ones (``"random"``); padded columns never sampled."""
    s, width = data.kspace.shape[0], data.kspace.shape[-1]
    if data.mask is not None and not data.mask.all():
        mask = np.broadcast_to(data.mask, (s, width)).copy()
        if encoded is not None:
            mask[:, : encoded[0]] = False
            mask[:, encoded[1] :] = False
        return mask, "file", None
    if accel is None:
        raise MrimsmError(f"{data.path.name} is fully sampled: give --accel R to undersample it")
    return _retrospective_masks(data.path.name, data.slices, width, accel, seed, center_fraction, encoded), "random", accel


def _estimate_maps(kspace: np.ndarray, mask: np.ndarray, progress: Optional[Progress]) -> np.ndarray:
    """ESPIRiT maps calibrated on the block of :func:`mrimsm.data.espirit.calibration_region`
    (prep-fastmri's rule) of the centre columns every slice's mask keeps."""
    from mrimsm.data.espirit import calibration_region, estimate_maps, shared_acs_width

    acs = shared_acs_width(mask)
    if acs < MIN_CALIB_COLUMNS:
        raise MrimsmError(
            f"only {acs} fully sampled centre columns: too few to estimate coil maps "
            f"(need >= {MIN_CALIB_COLUMNS})"
        )
    region = calibration_region(mask, height=kspace.shape[-2])
    with open_bar(progress, "coil maps", kspace.shape[0]) as bar:
        return estimate_maps(
            kspace,
            calib_width=region.width,
            calib_rows=region.rows,
            kernel_width=region.kernel_width,
            progress=bar.update,
        )


#: ESPIRiT map magnitude above which a single-coil file's pixel is on the object's support.
SUPPORT_THRESHOLD = 0.5


def _single_coil_maps(kspace: np.ndarray, mask: np.ndarray, progress: Optional[Progress]) -> np.ndarray:
    """``(S, 1, h, W)`` complex64 coil "maps" of a single-coil file: the identity (1) on the
    object's support, 0 outside it.

    fastMRI's single-coil k-space is already one combined image, so the map is the
    identity; the support is where the one-coil ESPIRiT map exceeds
    :data:`SUPPORT_THRESHOLD` (ESPIRiT's own crop of the calibration's eigenvalues), as the
    multi-coil maps are zero off the coils' support. Without the support the MSM priors,
    which never saw signal outside a coil support, diverge (simulated 64 x 64 single-coil
    slices at R = 4: image peak 5.5e3 after 4 steps, 2.9e6 after 10, against a reference
    peak of 0.92), and CS-L1 loses 0.8 dB (21.42 against 22.20 dB on 3 slices).
    """
    maps = _estimate_maps(kspace, mask, progress)
    return (np.abs(maps) > SUPPORT_THRESHOLD).astype(np.complex64)


def has_own_mask(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` carries an undersampling ``mask`` (one that drops a column), which
    :func:`prepare_volume` uses instead of a retrospective one; ``False`` when the file
    cannot be read (its reconstruction reports why)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "mask" in f and not np.asarray(f["mask"][()]).astype(bool).all()
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):
        return False


def accel_note(volume: "PreparedVolume", asked: Optional[float]) -> Optional[str]:
    """The one-line note for an asked ``--accel`` that a file's own mask overrides, else ``None``."""
    if asked is None or volume.mask_source != "file":
        return None
    return (f"{volume.path.name} carries its own mask (R = {volume.achieved_accel:.2f}); "
            f"--accel {asked:g} is ignored for it")


def _compress(kspace: np.ndarray, mask: np.ndarray, coils: Optional[int]) -> tuple:
    """``(kspace, coils, coils_default, energy kept, seconds)``: ``kspace (S, C, h, W)``
    compressed to ``coils`` virtual coils (``None``: :func:`~mrimsm.data.coil_compression.default_coils`)
    when fewer than ``C``; ``coils_default`` says the default chose it; ``energy``: the least
    share of energy a slice kept, ``None`` without compression."""
    from mrimsm.data.coil_compression import compress_coils, default_coils

    file_coils = int(kspace.shape[1])
    energy, coils_default = None, coils is None and default_coils(file_coils) is not None
    coils = default_coils(file_coils) if coils is None else coils
    t0 = time.perf_counter()
    if coils is not None and coils < file_coils:
        shares: list = []
        kspace = compress_coils(kspace, mask, coils, kept=shares)
        energy = float(shares[0].min())
    return kspace, coils, coils_default, energy, time.perf_counter() - t0


def prepare_volume(
    path: Union[str, os.PathLike],
    accel: Optional[float],
    seed: int = 0,
    *,
    center_fraction: Optional[float] = None,
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    progress: Optional[Progress] = None,
    coils: Optional[int] = None,
) -> PreparedVolume:
    """Read a file and make the masked k-space, masks and coil maps every method uses.

    Args:
        path: fastMRI multi-coil ``.h5``, or a single-coil one (``kspace`` ``(S, H, W)``,
            reference ``reconstruction_esc``; its coil map is the identity on the object's support).
        accel: acceleration for retrospective undersampling of a fully sampled file
            (ignored when the file carries its own undersampled ``mask``).
        seed: base seed of the per-slice masks.
        center_fraction: override the centre fraction (default: fastMRI's, 0.08 at R <= 4,
            0.04 at R >= 8, with at least :data:`MIN_CENTER_COLUMNS` columns).
        maps_fn: ``maps_fn(kspace (S, C, h, W), mask (S, W)) -> maps`` instead of ESPIRiT
            (tests, or known maps).
        progress: ``progress(desc, total)`` -> context manager with ``update(n)`` (e.g. tqdm).
        coils: compress the masked k-space to this many virtual coils before the coil maps
            (:func:`mrimsm.data.coil_compression.compress_coils`, calibrated per slice on
            its acquired centre columns); at least the file's coils: no compression
            (:func:`coils_note` says so); ``None``: the default,
            :func:`mrimsm.data.coil_compression.default_coils` (12 virtual coils above 16).
    """
    from mrimsm.baselines.classical import zero_filled
    from mrimsm.data.coil_compression import check_coils
    from mrimsm.data.fastmri_io import crop_to_reconstruction, read_multicoil, slice_thickness_from_header
    from mrimsm.data.noise import estimate_noise_std

    coils = check_coils(coils)
    data = read_multicoil(path, single_coil=True)
    _, _, big_h, width = data.kspace.shape
    h, w = data.recon_size
    if h > big_h or w > width:
        raise MrimsmError(
            f"reference size {h}x{w} is larger than the k-space matrix {big_h}x{width} in {data.path}"
        )
    encoded = encoded_region(data)
    mask, source, accel = _volume_masks(data, accel, seed, center_fraction, encoded)

    kspace = crop_readout(data.kspace, h) * mask[:, None, None, :].astype(np.complex64)
    if not np.isfinite(kspace).all():
        raise MrimsmError(
            f"{Path(path).name}: k-space values up to {float(np.abs(data.kspace).max()):.3g} overflow float32 "
            f"arithmetic; rescale the file"
        )

    file_coils = int(kspace.shape[1])
    kspace, coils, coils_default, energy, compress_seconds = _compress(kspace, mask, coils)

    t0 = time.perf_counter()
    if maps_fn is not None:
        maps = np.asarray(maps_fn(kspace, mask), dtype=np.complex64)
    elif data.single_coil:
        maps = _single_coil_maps(kspace, mask, progress)
    else:
        maps = _estimate_maps(kspace, mask, progress)
    maps_seconds = time.perf_counter() - t0
    if maps.shape != kspace.shape:
        raise MrimsmError(f"coil maps have shape {maps.shape}, expected {kspace.shape}")

    zf = zero_filled(kspace, mask, maps).abs().numpy()
    n_encoded = width if encoded is None else encoded[1] - encoded[0]
    return PreparedVolume(
        path=data.path,
        kspace=kspace,
        mask=mask,
        maps=maps,
        reference=data.reference,
        recon_size=(h, w),
        zero_filled=np.ascontiguousarray(crop_to_reconstruction(zf, (h, w)), dtype=np.float32),
        slices=list(data.slices),
        attrs=dict(data.attrs),
        mask_source=source,
        accel=accel,
        achieved_accel=float(n_encoded / mask.sum(axis=1).mean()),
        seed=int(seed),
        scale=volume_scale(kspace, mask, maps),
        maps_seconds=maps_seconds,
        pixel_mm=data.pixel_mm,
        noise_std=estimate_noise_std(data.kspace, columns=mask),
        slice_mm=slice_thickness_from_header(data.ismrmrd_header),
        file_coils=file_coils,
        coils=coils,
        coils_default=coils_default,
        coil_energy_kept=energy,
        compress_seconds=compress_seconds,
        single_coil=data.single_coil,
        encoded=encoded,
        reference_name=data.reference_name,
    )


def coils_note(volume: "PreparedVolume") -> Optional[str]:
    """The one-line note for a ``--coils`` that compresses nothing (at least the file's
    coils) or for the default compression of a scan with many coils, else ``None``."""
    from mrimsm.data.coil_compression import coils_note as note

    return note(volume.coils, volume.file_coils, volume.path.name, default=volume.coils_default)
