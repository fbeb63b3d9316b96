"""The method interface and registry of ``mrimsm recon``, with the built-in methods.

A method is a callable ``method(batch: SliceBatch) -> MethodOutput`` built by a factory
``factory(options) -> method``; :func:`register_method` puts it in the one registry
(``_REGISTRY`` of this module; tests swap in a copy of it here) that :func:`get_method` reads. Plug-in modules
(:data:`PLUGIN_MODULES`) register theirs when first imported. Built in: ``zero-filled``
and ``cs`` (L1-wavelet compressed sensing).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch

from mrimsm.errors import MrimsmError


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
    """Register a reconstruction method under ``name`` (see :mod:`mrimsm.recon`)."""
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

    method.settings = {}  # what the output depends on (recorded in it; no options)
    return method


def _sense_factory(options: Mapping[str, Any]) -> ReconMethod:
    from mrimsm.baselines import classical

    lamda = options.get("sense_lambda")
    iters = options.get("sense_iters")
    lamda = classical.SENSE_LAMBDA if lamda is None else float(lamda)
    iters = classical.SENSE_ITERS if iters is None else int(iters)
    if not (math.isfinite(lamda) and lamda >= 0):
        raise MrimsmError(f"--sense-lambda must be a number >= 0, got {lamda}")
    if iters < 1:
        raise MrimsmError(f"--sense-iters must be >= 1, got {iters}")

    def method(batch: SliceBatch) -> MethodOutput:
        images = classical.sense(batch.kspace, batch.mask, batch.maps, lamda=lamda, max_iter=iters)
        return MethodOutput(images, info={"iterations": iters, "lambda": lamda})

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

    method.settings = {"lambda": lamda, "iters": iters}
    return method


register_method(
    "zero-filled", _zero_filled_factory, batch_slices=64, description="A^H y with the ESPIRiT maps"
)
register_method(
    "sense",
    _sense_factory,
    needs_normalization=True,
    batch_slices=16,
    description="CG-SENSE with Tikhonov regularization (parallel imaging, no prior)",
)
register_method(
    "cs",
    _cs_factory,
    needs_normalization=True,
    batch_slices=4,
    description="L1-wavelet compressed sensing (sigpy), FISTA",
)
