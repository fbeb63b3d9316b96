"""The reconstruction pipeline behind ``mrimsm recon``, with a method registry.

Pipeline for one fastMRI multi-coil file (:func:`reconstruct_file`)::

    read (validated)                      mrimsm.data.fastmri_io.read_multicoil
    -> remove readout oversampling        1-D centred IFFT along H, centre-crop the rows to the
                                          reference height, FFT back (exact for column masks)
    -> mask                               the file's own mask if it is undersampled, else a seeded
                                          RandomCartesian(accel) per slice, seed_for(file, slice, seed)
    -> coil maps                          ESPIRiT from the centre columns the mask keeps
    -> reconstruct, for each method       registry below; normalized input if the method asks
    -> crop columns, magnitude            (S, h, w) on the reference's intensity scale
    -> metrics, output, PNGs              fastMRI layout, written atomically, never onto the input

A directory of files (:func:`reconstruct_directory`) runs the same pipeline per file with the
methods built once, skips files already done, reports and skips bad files, and splits the
files across ``torchrun`` ranks (rank ``r`` of ``N`` takes files ``r, r + N, ...``).

**Adding a method.** A method is a callable ``method(batch: SliceBatch) -> MethodOutput``
built by a factory ``factory(options: Mapping[str, Any]) -> method`` (``options``: the
command's options, e.g. ``device``, ``seed``, ``cs_lambda``, ``checkpoint``; a factory
reads the keys it knows and ignores the rest). Register it once at import time::

    register_method("msm", make_msm_method, needs_normalization=True, batch_slices=1)

and add the module to :data:`PLUGIN_MODULES` so the pipeline imports it. A factory may be
given as ``"package.module:function"`` to defer importing heavy code.

**Normalization contract.** With ``needs_normalization=True`` the pipeline divides the
volume's k-space by ``scale = max |A^H y|`` over the volume (zero-filled SENSE image of the
masked data with the estimated maps, see :func:`volume_scale`), so the method sees images
with max magnitude about 1, as MSM/SSDU training data (max |x| = 1 per volume); it multiplies
the returned images and uncertainty by ``scale`` afterwards. ``batch.scale`` says which
divisor was used (1.0 for methods that do not ask).
"""

from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from mrimsm.errors import MrimsmError

__all__ = [
    "SliceBatch",
    "MethodOutput",
    "MethodSpec",
    "register_method",
    "get_method",
    "available_methods",
    "default_method",
    "PLUGIN_MODULES",
    "parse_accel",
    "crop_readout",
    "MIN_CENTER_COLUMNS",
    "volume_scale",
    "PreparedVolume",
    "MethodResult",
    "prepare_volume",
    "run_method",
    "write_result",
    "save_pngs",
    "plan_outputs",
    "reconstruct_file",
    "format_table",
    "NUMERIC_OPTIONS",
    "parse_number",
    "parse_options",
    "resolve_device",
    "list_inputs",
    "rank_info",
    "files_for_rank",
    "directory_outputs",
    "FileOutcome",
    "DirectoryReport",
    "reconstruct_directory",
    "format_outcome",
    "format_directory_summary",
]

# -- the method interface ------------------------------------------------------


@dataclass
class SliceBatch:
    """What a method receives: a batch of slices of one volume.

    Attributes:
        kspace: ``(S, C, H, W)`` complex64 masked k-space (zero outside the mask;
            divided by ``scale`` when the method asked for normalized input).
        mask: ``(S, 1, 1, W)`` float32 column masks (``MultiCoilMRI``'s layout).
        maps: ``(S, C, H, W)`` complex64 coil maps, ``sum_c |C_c|^2 = 1`` in the support.
        slice_indices: the slices' indices in the file.
        seeds: one seed per slice, ``seed_for(file name, slice, --seed)``: draw a
            method's randomness from these so results do not depend on batching.
        scale: the divisor applied to ``kspace`` (1.0 when not normalized).
        on_step: optional ``on_step(done, total)`` for progress inside a method
            (e.g. diffusion steps); may be ``None``.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor
    slice_indices: list
    seeds: list
    scale: float = 1.0
    on_step: Optional[Callable[[int, int], None]] = None


@dataclass
class MethodOutput:
    """What a method returns.

    Attributes:
        images: ``(S, H, W)`` complex64 reconstructions (in the input's scale).
        uncertainty: optional ``(S, H, W)`` float32 pixel-wise standard deviation.
        info: optional numbers to report (e.g. ``{"nfe_per_slice": 600}``).
    """

    images: torch.Tensor
    uncertainty: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)


ReconMethod = Callable[[SliceBatch], MethodOutput]
Factory = Callable[[Mapping[str, Any]], ReconMethod]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the ``--method`` value.
        factory: ``factory(options) -> method``, or ``"module:function"`` (imported lazily).
        needs_normalization: the pipeline scales the volume to max |x| ~ 1 first.
        batch_slices: slices per call (memory / progress granularity).
        description: one line for ``--help``.
    """

    name: str
    factory: Union[Factory, str]
    needs_normalization: bool = False
    batch_slices: int = 8
    description: str = ""

    def build(self, options: Mapping[str, Any]) -> ReconMethod:
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(options)


_REGISTRY: dict[str, MethodSpec] = {}

#: Modules that register methods when imported (missing ones are skipped).
PLUGIN_MODULES: tuple[str, ...] = ("mrimsm.diffusion.posterior", "mrimsm.baselines.ssdu")
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}
_plugin_specs: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    factory: Union[Factory, str],
    *,
    needs_normalization: bool = False,
    batch_slices: int = 8,
    description: str = "",
    replace: bool = False,
) -> MethodSpec:
    """Register a reconstruction method under ``name`` (see the module docstring)."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"reconstruction method {name!r} is already registered")
    if batch_slices < 1:
        raise ValueError("batch_slices must be >= 1")
    spec = MethodSpec(name, factory, needs_normalization, int(batch_slices), description)
    _REGISTRY[name] = spec
    return spec


def _load_plugins() -> None:
    """Import :data:`PLUGIN_MODULES` once. A module that does not exist is skipped; one
    that fails to import is remembered and named when its method is asked for.

    The methods the plugins registered are remembered too and put back if the registry
    object was replaced since (tests swap in a copy of it; a module registers only when
    it is first imported, so it would not register again)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        before = dict(_REGISTRY)
        for module in PLUGIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name is None or not module.startswith(exc.name):
                    _plugin_errors[module] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a broken plugin must not break the other methods
                _plugin_errors[module] = f"{type(exc).__name__}: {exc}"
        _plugin_specs.update({k: v for k, v in _REGISTRY.items() if before.get(k) is not v})
    for name, spec in _plugin_specs.items():
        _REGISTRY.setdefault(name, spec)


def available_methods() -> list[str]:
    """Names of all registered methods (plugins imported)."""
    _load_plugins()
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The spec registered under ``name``; MrimsmError naming the choices otherwise."""
    _load_plugins()
    if name not in _REGISTRY:
        broken = "".join(f" ({m} failed to import: {e})" for m, e in _plugin_errors.items())
        raise MrimsmError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}{broken}")
    return _REGISTRY[name]


def default_method() -> str:
    """``msm`` once it is registered, else ``cs``."""
    names = available_methods()
    return "msm" if "msm" in names else "cs"


# -- built-in methods: zero-filled and CS-L1-wavelet ----------------------------


def _zero_filled_factory(options: Mapping[str, Any]) -> ReconMethod:
    from mrimsm.baselines.classical import zero_filled

    def method(batch: SliceBatch) -> MethodOutput:
        return MethodOutput(zero_filled(batch.kspace, batch.mask, batch.maps))

    return method


def _cs_factory(options: Mapping[str, Any]) -> ReconMethod:
    from mrimsm.baselines import classical

    lamda = options.get("cs_lambda")
    iters = options.get("cs_iters")
    lamda = classical.DEFAULT_LAMBDA if lamda is None else float(lamda)
    iters = classical.DEFAULT_ITERS if iters is None else int(iters)
    if not (math.isfinite(lamda) and lamda >= 0):
        raise MrimsmError(f"--cs-lambda must be a number >= 0, got {lamda}")
    if iters < 1:
        raise MrimsmError(f"--cs-iters must be >= 1, got {iters}")

    def method(batch: SliceBatch) -> MethodOutput:
        images = classical.cs_l1_wavelet(batch.kspace, batch.mask, batch.maps, lamda=lamda, max_iter=iters)
        return MethodOutput(images, info={"iterations": iters, "lambda": lamda})

    return method


register_method(
    "zero-filled", _zero_filled_factory, batch_slices=64, description="A^H y with the ESPIRiT maps"
)
register_method(
    "cs",
    _cs_factory,
    needs_normalization=True,
    batch_slices=4,
    description="L1-wavelet compressed sensing (sigpy), FISTA",
)

# -- small pieces ----------------------------------------------------------------


def parse_accel(value: Any) -> float:
    """``"6"`` -> 6.0; MrimsmError unless a finite number >= 1."""
    try:
        accel = float(value)
    except (TypeError, ValueError):
        raise MrimsmError(f"--accel must be a number >= 1, got {value!r}") from None
    if not math.isfinite(accel) or accel < 1:
        raise MrimsmError(f"--accel must be a number >= 1, got {value!r}")
    return accel


#: Numeric options of ``mrimsm recon``: ``key -> (flag, type, low, high, low_open)``
#: (``None`` = unbounded). The command takes them as text and calls
#: :func:`parse_options`, so a bad value is a one-line error, never a usage block.
#: Ranges that depend on a method (``eta``, ``dc_step``) are left to its factory.
NUMERIC_OPTIONS: dict[str, tuple] = {
    "seed": ("--seed", int, 0, None, False),
    "center_fraction": ("--center-fraction", float, 0.0, 1.0, True),
    "cs_lambda": ("--cs-lambda", float, 0.0, None, False),
    "cs_iters": ("--cs-iters", int, 1, None, False),
    "steps": ("--steps", int, 1, None, False),
    "w": ("--w", int, 1, None, False),
    "samples": ("--samples", int, 1, None, False),
    "eta": ("--eta", float, None, None, False),
    "dc_step": ("--dc-step", float, None, None, False),
    "batch_slices": ("--batch-slices", int, 1, None, False),
}


def parse_number(value: Any, flag: str, kind: type = float, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False) -> Union[int, float]:
    """``"6"`` -> ``6`` (``kind=int``) or ``6.0``: a finite number in ``[low, high]``
    (``(low, high]`` with ``low_open``); MrimsmError naming ``flag`` otherwise."""
    what = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        what += f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        what += f" {'>' if low_open else '>='} {low:g}"
    try:
        if kind is int:
            text = str(value).strip()
            number: Union[int, float] = int(text)
        else:
            number = float(value)
    except (TypeError, ValueError):
        raise MrimsmError(f"{flag} must be {what}, got {value!r}") from None
    bad_low = low is not None and (number <= low if low_open else number < low)
    if not math.isfinite(number) or bad_low or (high is not None and number > high):
        raise MrimsmError(f"{flag} must be {what}, got {value!r}")
    return number


def parse_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The command's options with numeric text parsed (see :data:`NUMERIC_OPTIONS`).

    ``None`` stays ``None`` (not given); other keys pass through unchanged.
    """
    out = dict(raw)
    for key, (flag, kind, low, high, low_open) in NUMERIC_OPTIONS.items():
        if out.get(key) is not None:
            out[key] = parse_number(out[key], flag, kind, low, high, low_open)
    return out


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


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc) -> None:
        return None


Progress = Callable[[str, int], ContextManager[Any]]


def _bar(progress: Optional[Progress], desc: str, total: int) -> ContextManager[Any]:
    return progress(desc, total) if progress is not None else _NullBar()


class _StepBar:
    """``on_step(done, total)`` for a method: opens an inner progress bar on first use."""

    def __init__(self, progress: Progress, desc: str):
        self.progress, self.desc = progress, desc
        self.cm: Any = None
        self.bar: Any = None
        self.last = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.cm = self.progress(self.desc, int(total))
            self.bar = self.cm.__enter__()
        self.bar.update(int(done) - self.last)
        self.last = int(done)

    def close(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)


# -- preparing a volume ------------------------------------------------------------


@dataclass
class PreparedVolume:
    """One file made ready for the methods (shared by all methods of a run).

    Attributes:
        path: the input file.
        kspace: ``(S, C, h, W)`` complex64 masked k-space, readout oversampling removed.
        mask: ``(S, W)`` bool, the mask of each slice.
        maps: ``(S, C, h, W)`` complex64 ESPIRiT maps.
        reference: ``(S, h, w)`` float32 ``reconstruction_rss`` or ``None``.
        recon_size: ``(h, w)`` of the output.
        zero_filled: ``(S, h, w)`` float32 magnitude of ``A^H y`` (for figures).
        slices: slice indices in the file.
        attrs: the input's HDF5 attributes.
        mask_source: ``"file"`` (the file's own mask) or ``"random"`` (retrospective).
        accel: the requested acceleration (``None`` when the file's mask is used).
        achieved_accel: ``W / mean number of sampled columns``.
        seed: the base seed.
        scale: :func:`volume_scale`, the divisor for methods that need normalized input.
        maps_seconds: wall time of the coil-map estimation.
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


#: Fewest fully sampled centre columns of a retrospective mask (ESPIRiT calibrates on
#: them). fastMRI's fractions give 15+ at 256 columns but only 4 at 64 columns and R = 6;
#: measured on simulated 64 x 64 MNI volumes at R = 6 (``cs`` PSNR, sample / 3 tuning
#: volumes): 21.3 / 22.4 dB with 4 centre columns, 23.5 / 23.9 dB with 8.
MIN_CENTER_COLUMNS = 8
#: Below this many centre columns (e.g. in a file's own mask) coil maps are refused
#: (the same limit as prep-fastmri).
MIN_CALIB_COLUMNS = 3
#: Readout rows of the ESPIRiT calibration block (the readout is fully sampled).
CALIB_ROWS = 24


def _default_center_fraction(accel: float, width: int) -> float:
    """fastMRI's pairing (0.08 at R <= 4, 0.04 at R >= 8, linear between), raised to
    keep at least :data:`MIN_CENTER_COLUMNS` columns."""
    cf = 0.08 if accel <= 4 else (0.04 if accel >= 8 else 0.08 - 0.01 * (accel - 4))
    if round(width * cf) < MIN_CENTER_COLUMNS:
        cf = MIN_CENTER_COLUMNS / width
    return cf


def _retrospective_masks(
    name: str, slices: Sequence[int], width: int, accel: float, seed: int, center_fraction: Optional[float]
) -> np.ndarray:
    """``(S, W)`` bool: ``RandomCartesian(accel)`` drawn with ``seed_for(name, slice, seed)``."""
    from mrimsm.physics.masks import cartesian_family, seed_for

    cf = _default_center_fraction(accel, width) if center_fraction is None else float(center_fraction)
    if not 0 < cf <= 1:
        raise MrimsmError(f"--center-fraction must be in (0, 1], got {center_fraction}")
    try:
        family = cartesian_family("random", accel, center_fraction=cf)
        return np.stack([family((1, width), seed_for(name, int(s), seed)) for s in slices])
    except ValueError as exc:  # too much acceleration for the matrix once the centre is kept
        raise MrimsmError(str(exc)) from None


def _estimate_maps(kspace: np.ndarray, mask: np.ndarray, progress: Optional[Progress]) -> np.ndarray:
    """ESPIRiT maps calibrated, as in prep-fastmri, on a ``CALIB_ROWS x min(24, ACS)``
    block of the centre columns every slice's mask keeps, kernel ``min(6, (ACS + 1) // 2)``."""
    from mrimsm.data.espirit import acs_width, estimate_maps

    acs = min(acs_width(m) for m in mask)
    if acs < MIN_CALIB_COLUMNS:
        raise MrimsmError(
            f"only {acs} fully sampled centre columns: too few to estimate coil maps "
            f"(need >= {MIN_CALIB_COLUMNS})"
        )
    width = min(24, acs)
    with _bar(progress, "coil maps", kspace.shape[0]) as bar:
        return estimate_maps(
            kspace,
            calib_width=width,
            calib_rows=min(CALIB_ROWS, kspace.shape[-2]),
            kernel_width=min(6, (width + 1) // 2),
            progress=bar.update,
        )


def prepare_volume(
    path: Union[str, os.PathLike],
    accel: Optional[float],
    seed: int = 0,
    *,
    center_fraction: Optional[float] = None,
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    progress: Optional[Progress] = None,
) -> PreparedVolume:
    """Read a file and make the masked k-space, masks and coil maps every method uses.

    Args:
        path: fastMRI multi-coil ``.h5``.
        accel: acceleration for retrospective undersampling of a fully sampled file
            (ignored when the file carries its own undersampled ``mask``).
        seed: base seed of the per-slice masks.
        center_fraction: override the centre fraction (default: fastMRI's, 0.08 at R <= 4,
            0.04 at R >= 8, with at least :data:`MIN_CENTER_COLUMNS` columns).
        maps_fn: ``maps_fn(kspace (S, C, h, W), mask (S, W)) -> maps`` instead of ESPIRiT
            (tests, or known maps).
        progress: ``progress(desc, total)`` -> context manager with ``update(n)`` (e.g. tqdm).
    """
    from mrimsm.baselines.classical import zero_filled
    from mrimsm.data.fastmri_io import crop_to_reconstruction, read_multicoil

    data = read_multicoil(path)
    s, _, big_h, width = data.kspace.shape
    h, w = data.recon_size
    if h > big_h or w > width:
        raise MrimsmError(
            f"reference size {h}x{w} is larger than the k-space matrix {big_h}x{width} in {data.path}"
        )

    if data.mask is not None and not data.mask.all():
        mask = np.broadcast_to(data.mask, (s, width)).copy()
        source, accel = "file", None
    else:
        if accel is None:
            raise MrimsmError(f"{data.path.name} is fully sampled: give --accel R to undersample it")
        mask = _retrospective_masks(data.path.name, data.slices, width, accel, seed, center_fraction)
        source = "random"

    kspace = crop_readout(data.kspace, h) * mask[:, None, None, :].astype(np.complex64)

    t0 = time.perf_counter()
    maps = (
        np.asarray(maps_fn(kspace, mask), dtype=np.complex64)
        if maps_fn is not None
        else _estimate_maps(kspace, mask, progress)
    )
    maps_seconds = time.perf_counter() - t0
    if maps.shape != kspace.shape:
        raise MrimsmError(f"coil maps have shape {maps.shape}, expected {kspace.shape}")

    zf = zero_filled(kspace, mask, maps).abs().numpy()
    return PreparedVolume(
        path=data.path,
        kspace=kspace,
        mask=mask,
        maps=maps,
        reference=data.reconstruction_rss,
        recon_size=(h, w),
        zero_filled=np.ascontiguousarray(crop_to_reconstruction(zf, (h, w)), dtype=np.float32),
        slices=list(data.slices),
        attrs=dict(data.attrs),
        mask_source=source,
        accel=accel,
        achieved_accel=float(width / mask.sum(axis=1).mean()),
        seed=int(seed),
        scale=volume_scale(kspace, mask, maps),
        maps_seconds=maps_seconds,
    )


# -- running a method ----------------------------------------------------------------


@dataclass
class MethodResult:
    """One method's reconstruction of one volume.

    Attributes:
        method: its name.
        reconstruction: ``(S, h, w)`` float32 magnitude on the reference's scale.
        uncertainty: ``(S, h, w)`` float32 or ``None``.
        metrics: :func:`mrimsm.metrics.all_metrics` against the reference, or ``None``.
        seconds_per_slice: the method's wall time per slice (coil maps excluded).
        info: what the method reported.
    """

    method: str
    reconstruction: np.ndarray
    uncertainty: Optional[np.ndarray]
    metrics: Optional[dict]
    seconds_per_slice: float
    info: dict = field(default_factory=dict)


def run_method(
    volume: PreparedVolume,
    name: str,
    options: Optional[Mapping[str, Any]] = None,
    progress: Optional[Progress] = None,
    method: Optional[ReconMethod] = None,
) -> MethodResult:
    """Reconstruct every slice of ``volume`` with the registered method ``name``
    (``method``: an already built instance, else built from ``options``).

    Slices go to the method ``options["batch_slices"]`` at a time if given, else the
    method's own ``batch_slices`` attribute if it has one, else the registered number.
    """
    from mrimsm.data.fastmri_io import crop_to_reconstruction
    from mrimsm.metrics import all_metrics
    from mrimsm.physics.masks import column_mask_tensor, seed_for

    spec = get_method(name)
    if method is None:
        method = spec.build(dict(options or {}))
    per_batch = int((options or {}).get("batch_slices") or getattr(method, "batch_slices", None) or spec.batch_slices)
    scale = volume.scale if spec.needs_normalization else 1.0
    n = volume.kspace.shape[0]
    images, stds, info = [], [], {}
    elapsed = 0.0
    with _bar(progress, name, n) as bar:
        for start in range(0, n, per_batch):
            sl = slice(start, min(n, start + per_batch))
            idx = volume.slices[sl]
            batch = SliceBatch(
                kspace=torch.from_numpy(volume.kspace[sl] / np.float32(scale)),
                mask=column_mask_tensor(volume.mask[sl]),
                maps=torch.from_numpy(volume.maps[sl]),
                slice_indices=list(idx),
                seeds=[seed_for(volume.path.name, int(i), volume.seed) for i in idx],
                scale=scale,
                on_step=_StepBar(progress, f"{name} steps") if progress is not None else None,
            )
            t0 = time.perf_counter()
            try:
                out = method(batch)
            finally:
                if batch.on_step is not None:
                    batch.on_step.close()
            elapsed += time.perf_counter() - t0
            got = tuple(out.images.shape)
            if got != tuple(batch.kspace.shape[:1] + batch.kspace.shape[2:]):
                raise RuntimeError(f"method {name!r} returned images of shape {got}")
            images.append(out.images.detach().cpu().abs().numpy() * scale)
            if out.uncertainty is not None:
                stds.append(out.uncertainty.detach().cpu().numpy() * scale)
            info.update(out.info)
            bar.update(sl.stop - sl.start)

    recon = np.ascontiguousarray(crop_to_reconstruction(np.concatenate(images), volume.recon_size), dtype=np.float32)
    unc = None
    if stds:
        unc = np.ascontiguousarray(crop_to_reconstruction(np.concatenate(stds), volume.recon_size), dtype=np.float32)
    metrics = all_metrics(volume.reference, recon) if volume.reference is not None else None
    return MethodResult(name, recon, unc, metrics, elapsed / max(n, 1), info)


# -- outputs -------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def plan_outputs(
    input_path: Union[str, os.PathLike],
    output: Optional[Union[str, os.PathLike]],
    methods: Sequence[str],
) -> dict[str, Path]:
    """Where each method's output goes.

    One method: ``output`` is the file (or, if it is an existing directory,
    ``output/<stem>.<method>.h5``). Several methods: ``output`` is a directory
    (created if needed), each method writes ``<stem>.<method>.h5``. No ``output``:
    the current directory. MrimsmError if any path is the input file.
    """
    src = Path(input_path)
    stem = src.name[: -len(".h5")] if src.name.endswith(".h5") else src.stem
    out = Path(output) if output is not None else Path.cwd()
    if len(methods) == 1 and output is not None and not out.is_dir():
        paths = {methods[0]: out}
    else:
        if out.exists() and not out.is_dir():
            raise MrimsmError(f"with several --method, -o must be a directory, got the file {out}")
        if len(methods) > 1 and output is not None and not out.exists() and out.suffix in (".h5", ".hdf5"):
            raise MrimsmError(f"with several --method, -o must be a directory, got {out}")
        paths = {m: out / f"{stem}.{m}.h5" for m in methods}
    for p in paths.values():
        if _same_file(src, p):
            raise MrimsmError(f"output {p} is the input file; choose another -o")
    return paths


def write_result(volume: PreparedVolume, result: MethodResult, path: Union[str, os.PathLike]) -> Path:
    """Write ``result`` in fastMRI's layout (atomically), metrics as attributes."""
    from mrimsm import __version__
    from mrimsm.data.fastmri_io import write_reconstruction

    path = Path(path)
    if _same_file(volume.path, path):
        raise MrimsmError(f"output {path} is the input file; choose another -o")
    attrs: dict[str, Any] = {k: volume.attrs[k] for k in ("acquisition", "patient_id", "max", "norm") if k in volume.attrs}
    attrs.update(
        method=result.method,
        source_file=volume.path.name,
        mask_source=volume.mask_source,
        acceleration=volume.accel if volume.accel is not None else volume.achieved_accel,
        acceleration_achieved=volume.achieved_accel,
        seed=volume.seed,
        seconds_per_slice=result.seconds_per_slice,
        mrimsm_version=__version__,
    )
    for key, value in (result.metrics or {}).items():
        attrs[key] = value
    extra = {"mask": volume.mask.astype(np.uint8)}
    if result.uncertainty is not None:
        extra["uncertainty"] = result.uncertainty
    return write_reconstruction(path, result.reconstruction, attrs=attrs, extra=extra)


def save_pngs(volume: PreparedVolume, result: MethodResult, out_dir: Union[str, os.PathLike]) -> list[Path]:
    """One PNG per slice: reference, zero-filled, reconstruction, |error|, uncertainty
    (the panels that exist). Files ``<stem>.<method>.slice<NNN>.png``, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrimsm.utils import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = volume.path.name[: -len(".h5")] if volume.path.name.endswith(".h5") else volume.path.stem
    ref = volume.reference
    written = []
    for i, sl in enumerate(volume.slices):
        vmax = float(ref[i].max()) if ref is not None else float(result.reconstruction[i].max())
        panels = []
        if ref is not None:
            panels.append(("reference", ref[i], "gray", vmax))
        panels.append(("zero-filled", volume.zero_filled[i], "gray", vmax))
        panels.append((result.method, result.reconstruction[i], "gray", vmax))
        if ref is not None:
            panels.append(("|error|", np.abs(result.reconstruction[i] - ref[i]), "magma", vmax / 4))
        if result.uncertainty is not None:
            panels.append(("std", result.uncertainty[i], "viridis", None))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
        for ax, (title, img, cmap, top) in zip(np.atleast_1d(axes), panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=top)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{volume.path.name} slice {sl}", fontsize=9)
        fig.tight_layout()
        target = out_dir / f"{stem}.{result.method}.slice{int(sl):03d}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(target)
    return written


# -- the whole file ----------------------------------------------------------------


@dataclass
class ReconReport:
    """What :func:`reconstruct_file` did."""

    volume: PreparedVolume
    results: list
    outputs: dict
    pngs: list


def reconstruct_file(
    input_path: Union[str, os.PathLike],
    output: Optional[Union[str, os.PathLike]] = None,
    methods: Optional[Sequence[str]] = None,
    accel: Optional[Any] = None,
    seed: int = 0,
    *,
    options: Optional[Mapping[str, Any]] = None,
    png_dir: Optional[Union[str, os.PathLike]] = None,
    center_fraction: Optional[float] = None,
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    progress: Optional[Progress] = None,
) -> ReconReport:
    """Reconstruct one file with one or more methods and write the outputs.

    Everything that can be checked before the expensive work is (method names,
    ``accel``, output paths, the file itself); each output appears atomically.

    Args:
        input_path: fastMRI multi-coil ``.h5``.
        output: output file (one method) or directory (several); default: the current directory.
        methods: method names (default: :func:`default_method`).
        accel: acceleration (number or string) for fully sampled files.
        seed: base seed of masks and method randomness.
        options: method options (``cs_lambda``, ``cs_iters``, ``device``, ...).
        png_dir: write per-slice figures there.
        center_fraction: override the retrospective mask's centre fraction.
        maps_fn: replace ESPIRiT (see :func:`prepare_volume`).
        progress: ``progress(desc, total)`` -> context manager with ``update(n)``.
    """
    names = list(dict.fromkeys(methods or [default_method()]))
    accel_value = parse_accel(accel) if accel is not None else None
    if not Path(input_path).exists():
        raise MrimsmError(f"no such file: {input_path}")
    outputs = plan_outputs(input_path, output, names)
    opts, built = _build_methods(names, options, seed)  # bad options fail before the heavy work
    return _reconstruct_one(
        input_path, outputs, built, accel_value, seed, opts, png_dir, center_fraction, maps_fn, progress
    )


def _build_methods(
    names: Sequence[str], options: Optional[Mapping[str, Any]], seed: int, local_rank: int = 0
) -> tuple[dict, dict[str, ReconMethod]]:
    """Options with ``seed`` and the resolved ``device``, and each method built once."""
    specs = [get_method(m) for m in names]
    opts = dict(options or {})
    opts.setdefault("seed", seed)
    opts["device"] = resolve_device(opts.get("device"), local_rank)
    return opts, {spec.name: spec.build(opts) for spec in specs}


def _reconstruct_one(
    input_path: Union[str, os.PathLike],
    outputs: Mapping[str, Path],
    built: Mapping[str, ReconMethod],
    accel: Optional[float],
    seed: int,
    opts: Mapping[str, Any],
    png_dir: Optional[Union[str, os.PathLike]],
    center_fraction: Optional[float],
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    progress: Optional[Progress],
) -> ReconReport:
    """Prepare one file, run the ``built`` methods, write ``outputs`` (and PNGs)."""
    volume = prepare_volume(
        input_path, accel, seed, center_fraction=center_fraction, maps_fn=maps_fn, progress=progress
    )
    results = [run_method(volume, m, opts, progress, method=b) for m, b in built.items()]
    for res in results:
        write_result(volume, res, outputs[res.method])
    pngs: list[Path] = []
    if png_dir is not None:
        for res in results:
            pngs += save_pngs(volume, res, png_dir)
    return ReconReport(volume, results, dict(outputs), pngs)


def resolve_device(requested: Optional[str], local_rank: int = 0) -> str:
    """The torch device for the learned methods.

    ``None``: CUDA when present, else the CPU. ``"cuda"``: GPU ``local_rank`` (modulo the
    GPU count), so each ``torchrun`` process takes its own GPU. ``"cuda:k"`` and ``"cpu"``
    stay as they are. MrimsmError for anything else or CUDA without a GPU.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    requested = str(requested).strip()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MrimsmError(f"--device {requested} asked for, but no CUDA device is available")
        if requested == "cuda":
            return f"cuda:{local_rank % torch.cuda.device_count()}"
        index = requested.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise MrimsmError(f"--device {requested}: no such GPU ({torch.cuda.device_count()} present)")
        return requested
    raise MrimsmError(f"--device must be cpu, cuda or cuda:N, got {requested!r}")


# -- many files: a directory, split across torchrun ranks ----------------------------


def list_inputs(directory: Union[str, os.PathLike]) -> list[Path]:
    """The ``*.h5`` files directly inside ``directory``, sorted by name (hidden files,
    e.g. unfinished atomic writes, skipped)."""
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.suffix == ".h5" and not p.name.startswith(".") and p.is_file())


def rank_info(environ: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` (``(0, 1, 0)`` when run alone)."""
    env = os.environ if environ is None else environ
    values = []
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = env.get(key, default)
        try:
            values.append(int(text))
        except ValueError:
            raise MrimsmError(f"environment variable {key}={text!r} is not an integer") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise MrimsmError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def files_for_rank(files: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """Rank ``r`` of ``N`` takes files ``r, r + N, r + 2N, ...`` (no communication needed)."""
    return list(files[rank::world_size])


def directory_outputs(input_file: Path, output_dir: Path, methods: Sequence[str]) -> dict[str, Path]:
    """Where a file of a directory run goes, in fastMRI's layout (same file name as
    the input): ``output_dir/<name>`` for one method, ``output_dir/<method>/<name>``
    for several."""
    if len(methods) == 1:
        return {methods[0]: output_dir / input_file.name}
    return {m: output_dir / m / input_file.name for m in methods}


@dataclass
class FileOutcome:
    """What happened to one file of a directory run.

    Attributes:
        path: the input file.
        status: ``"done"``, ``"skipped"`` (every output already there) or ``"failed"``.
        outputs: method -> output path (written or found).
        message: why it failed (one line), or what was skipped.
        num_slices: slices reconstructed (0 unless done).
        metrics: method -> :func:`mrimsm.metrics.all_metrics` (when the file has a reference).
        seconds_per_slice: method -> its wall time per slice.
        seconds: wall time of the whole file (coil maps included).
    """

    path: Path
    status: str
    outputs: dict
    message: str = ""
    num_slices: int = 0
    metrics: dict = field(default_factory=dict)
    seconds_per_slice: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DirectoryReport:
    """What :func:`reconstruct_directory` did on this rank."""

    input_dir: Path
    output_dir: Path
    methods: list
    rank: int
    world_size: int
    num_files: int
    outcomes: list

    def with_status(self, status: str) -> list:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list:
        return self.with_status("failed")


def reconstruct_directory(
    input_dir: Union[str, os.PathLike],
    output_dir: Optional[Union[str, os.PathLike]],
    methods: Optional[Sequence[str]] = None,
    accel: Optional[Any] = None,
    seed: int = 0,
    *,
    options: Optional[Mapping[str, Any]] = None,
    png_dir: Optional[Union[str, os.PathLike]] = None,
    center_fraction: Optional[float] = None,
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    progress: Optional[Progress] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    local_rank: Optional[int] = None,
    overwrite: bool = False,
    on_file: Optional[Callable[[FileOutcome], None]] = None,
) -> DirectoryReport:
    """Reconstruct every ``*.h5`` file of ``input_dir`` into ``output_dir``.

    Each file is reconstructed as by :func:`reconstruct_file` (same masks, seeds and
    outputs' content) into :func:`directory_outputs`. A file whose outputs all exist
    is skipped (outputs are written atomically, so an existing one is complete);
    ``overwrite`` redoes them. A file that cannot be reconstructed (corrupt, NaN,
    wrong size, ...) is reported in its :class:`FileOutcome` and the run goes on.
    Bad arguments (methods, options, ``accel``, directories) raise MrimsmError before
    any file is read. Under ``torchrun`` (``rank``/``world_size`` default to
    :func:`rank_info`) rank ``r`` takes files ``r, r + N, ...`` and, with CUDA, GPU
    ``local_rank``; no process group is needed.

    Args:
        input_dir: directory of fastMRI multi-coil files (not searched recursively).
        output_dir: where the outputs go (created; must not be ``input_dir``).
        on_file: called with each :class:`FileOutcome` as soon as the file is finished.
        Others: as :func:`reconstruct_file`.
    """
    src = Path(input_dir)
    if not src.is_dir():
        raise MrimsmError(f"no such directory: {src}")
    if output_dir is None:
        raise MrimsmError("a directory input needs -o OUTPUT_DIR")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise MrimsmError(f"with a directory input, -o must be a directory, got the file {out}")
    if _same_file(src, out):
        raise MrimsmError(f"-o {out} is the input directory; choose another")
    env_rank, env_world, env_local = rank_info()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    local_rank = env_local if local_rank is None else int(local_rank)
    names = list(dict.fromkeys(methods or [default_method()]))
    accel_value = parse_accel(accel) if accel is not None else None
    files = list_inputs(src)
    if not files:
        raise MrimsmError(f"no .h5 files in {src}")
    opts, built = _build_methods(names, options, seed, local_rank)

    mine = files_for_rank(files, rank, world_size)
    report = DirectoryReport(src, out, names, rank, world_size, len(files), [])
    with _bar(progress, "files", len(mine)) as bar:
        for path in mine:
            outcome = _directory_file(
                path, out, names, built, accel_value, seed, opts, png_dir, center_fraction, maps_fn, progress,
                overwrite,
            )
            report.outcomes.append(outcome)
            if on_file is not None:
                on_file(outcome)
            bar.update(1)
    return report


def _directory_file(
    path: Path,
    out: Path,
    names: Sequence[str],
    built: Mapping[str, ReconMethod],
    accel: Optional[float],
    seed: int,
    opts: Mapping[str, Any],
    png_dir: Optional[Union[str, os.PathLike]],
    center_fraction: Optional[float],
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    progress: Optional[Progress],
    overwrite: bool,
) -> FileOutcome:
    """One file of :func:`reconstruct_directory`, never raising for the file's own problems."""
    outputs = directory_outputs(path, out, names)
    todo = [m for m in names if overwrite or not outputs[m].exists()]
    if not todo:
        return FileOutcome(path, "skipped", outputs, "outputs already exist")
    t0 = time.perf_counter()
    try:
        rep = _reconstruct_one(
            path, {m: outputs[m] for m in todo}, {m: built[m] for m in todo}, accel, seed, opts, png_dir,
            center_fraction, maps_fn, progress,
        )
    except MrimsmError as exc:
        return FileOutcome(path, "failed", outputs, str(exc))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a file no check foresaw
        first = str(exc).splitlines()[0] if str(exc) else ""
        return FileOutcome(path, "failed", outputs, f"{type(exc).__name__}: {first}")
    return FileOutcome(
        path,
        "done",
        outputs,
        "" if len(todo) == len(names) else f"skipped existing: {', '.join(m for m in names if m not in todo)}",
        num_slices=len(rep.volume.slices),
        metrics={r.method: r.metrics for r in rep.results if r.metrics is not None},
        seconds_per_slice={r.method: r.seconds_per_slice for r in rep.results},
        seconds=time.perf_counter() - t0,
    )


def format_outcome(outcome: FileOutcome) -> str:
    """One line per file: status, name, and PSNR / SSIM (fastMRI convention) per method."""
    name = outcome.path.name
    if outcome.status == "failed":
        return f"failed  {name}: {outcome.message}"
    if outcome.status == "skipped":
        return f"skipped {name}: {outcome.message}"
    parts = [f"{m} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for m, v in outcome.metrics.items()]
    tail = f"; {outcome.message}" if outcome.message else ""
    return f"done    {name}: {outcome.num_slices} slices in {outcome.seconds:.1f} s" + (
        f"; PSNR / SSIM {', '.join(parts)}" if parts else "") + tail


def format_directory_summary(report: DirectoryReport) -> str:
    """Counts, failures with their reasons, and the mean metrics per method over the
    files reconstructed on this rank (both conventions, as :func:`format_table`)."""
    who = f"rank {report.rank} of {report.world_size}: " if report.world_size > 1 else ""
    n = len(report.outcomes)
    lines = [
        f"{who}{n} of {report.num_files} files in {report.input_dir}: {len(report.with_status('done'))} done, "
        f"{len(report.with_status('skipped'))} skipped (already done), {len(report.failed)} failed"
    ]
    lines += [f"  failed {o.path.name}: {o.message}" for o in report.failed]
    done = report.with_status("done")
    rows = []
    for m in report.methods:
        mets = [o.metrics[m] for o in done if m in o.metrics]
        secs = [o.seconds_per_slice[m] for o in done if m in o.seconds_per_slice]
        if mets:
            mean = {k: float(np.mean([x[k] for x in mets])) for k in mets[0]}
            rows.append(
                f"{m:<12} {mean['psnr']:7.2f} {mean['ssim']:7.4f} {mean['nmse']:8.4f}   "
                f"{mean['psnr_slice']:7.2f} {mean['ssim_slice']:7.4f} {mean['nmse_slice']:8.4f}   "
                f"{np.mean(secs):8.3f}   {len(mets)}"
            )
    if rows:
        head = (f"{'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   "
                f"{'s/slice':>8}   files")
        lines += ["mean over files with a reference:",
                  f"{'':<12} {'fastMRI (volume, max = ref max)':^25}   {'paper (per slice, [0, 1])':^25}", head,
                  "-" * len(head)] + rows
    return "\n".join(lines)


def format_table(results: Sequence[MethodResult], volume: Optional[PreparedVolume] = None) -> str:
    """A plain-text metrics table, one row per method: PSNR / SSIM / NMSE in fastMRI's
    per-volume convention and in the paper's per-slice [0, 1] convention, and seconds per slice."""
    head = (
        f"{'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'s/slice':>8}"
    )
    lines = []
    if volume is not None:
        how = f"R = {volume.accel:g}" if volume.accel is not None else "the file's own mask"
        lines.append(
            f"{volume.path.name}: {len(volume.slices)} slices, {how} (achieved {volume.achieved_accel:.2f}), "
            f"coil maps {volume.maps_seconds / max(len(volume.slices), 1):.2f} s/slice"
        )
    lines += [f"{'':<12} {'fastMRI (volume, max = ref max)':^25}   {'paper (per slice, [0, 1])':^25}", head]
    lines.append("-" * len(head))
    for r in results:
        m = r.metrics
        if m is None:
            vals = f"{'-':>7} {'-':>7} {'-':>8}   {'-':>7} {'-':>7} {'-':>8}"
        else:
            vals = (
                f"{m['psnr']:7.2f} {m['ssim']:7.4f} {m['nmse']:8.4f}   "
                f"{m['psnr_slice']:7.2f} {m['ssim_slice']:7.4f} {m['nmse_slice']:8.4f}"
            )
        lines.append(f"{r.method:<12} {vals}   {r.seconds_per_slice:8.3f}")
    if results and all(r.metrics is None for r in results):
        lines.append("(no reconstruction_rss in the file: no metrics)")
    return "\n".join(lines)
