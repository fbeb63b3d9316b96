"""The method interface of ``mrimsm recon`` and the static table of its methods.

A method is an object of the :class:`ReconMethod` protocol (``reconstruct(batch:
SliceBatch) -> MethodOutput``, its ``settings``, ``batch_slices`` and memory per slice),
built as ``cls(options)``. :data:`METHODS` maps each ``--method`` name to its class,
written ``"module:Class"`` and imported only when the method is built, and to its flags.
Nothing registers itself: adding a method is one line in the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Union, runtime_checkable

import torch

from mrimsm.errors import MrimsmError
from mrimsm.utils import load_method_object


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
        pixel_mm: ``(rows, columns)`` pixel size in mm from the file's header, or ``None``.
        noise_std: the scan's measured k-space noise std per real component, in the
            units of ``kspace`` (divided by ``scale`` like it), or ``None``.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor
    slice_indices: list
    seeds: list
    scale: float = 1.0
    on_step: Optional[Callable[[int, int], None]] = None
    pixel_mm: Optional[tuple] = None
    noise_std: Optional[float] = None


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


@runtime_checkable
class ReconMethod(Protocol):
    """A reconstruction method of ``mrimsm recon``, built once per command from its options.

    Attributes:
        name: its ``--method`` name.
        settings: everything its outputs depend on (a dict or a dataclass, checkpoint paths
            under keys containing ``checkpoint``), recorded in each output; ``None``: the
            command's non-runtime options are recorded instead
            (:func:`mrimsm.recon.outputs.output_record`).
        batch_slices: slices per :meth:`reconstruct` call (memory / progress granularity),
            unless the command's ``batch_slices`` option says otherwise.
    """

    name: str
    settings: Any
    batch_slices: int

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        """The images of the batch's ``S`` slices (see :class:`MethodOutput`)."""
        ...

    def memory_per_slice(self, shape: tuple[int, int], coils: int) -> Optional[int]:
        """Estimated peak bytes of one ``(H, W)`` slice of ``coils`` coils, or ``None``
        (small: the pipeline does not batch down for it)."""
        ...


class MethodBase:
    """Defaults for a :class:`ReconMethod`: no recorded settings of its own, 8 slices a
    call, no memory estimate. A subclass takes the command's options in ``__init__``
    (reading the keys it knows, failing there on bad ones) and implements :meth:`reconstruct`."""

    name: str = ""
    settings: Any = None
    batch_slices: int = 8

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        raise NotImplementedError

    def memory_per_slice(self, shape: tuple[int, int], coils: int) -> Optional[int]:
        return None


#: What builds a method: a :class:`ReconMethod` class (or any callable) taking the options.
MethodClass = Callable[[Mapping[str, Any]], ReconMethod]


@dataclass(frozen=True)
class MethodSpec:
    """One row of the method table.

    Attributes:
        name: the ``--method`` value.
        cls: the method's class, built as ``cls(options)``, or ``"module:Class"``
            (imported on use).
        needs_normalization: the pipeline scales the volume to max |x| ~ 1 first.
        description: one line for ``--help``.
    """

    name: str
    cls: Union[MethodClass, str]
    needs_normalization: bool = False
    description: str = ""

    def build(self, options: Mapping[str, Any]) -> ReconMethod:
        """The method, built from the command's ``options``."""
        return load_method_object(self.name, self.cls)(options)


#: The reconstruction methods, by ``--method`` name.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("zero-filled", "mrimsm.recon.classical:ZeroFilled", description="A^H y with the ESPIRiT maps"),
        MethodSpec(
            "sense", "mrimsm.recon.classical:SenseRecon", needs_normalization=True,
            description="CG-SENSE with Tikhonov regularization (parallel imaging, no prior)",
        ),
        MethodSpec(
            "cs", "mrimsm.recon.classical:CSRecon", needs_normalization=True,
            description="L1-wavelet compressed sensing (sigpy), FISTA",
        ),
        MethodSpec(
            "ssdu", "mrimsm.recon.ssdu:SSDURecon", needs_normalization=True,
            description="SSDU unrolled network (self-supervised baseline), all acquired lines",
        ),
        MethodSpec(
            "msm", "mrimsm.recon.msm:MSMRecon", needs_normalization=True,
            description="MSM diffusion prior + data consistency (Algorithm 1)",
        ),
    )
}

#: What ``mrimsm recon`` runs without ``--method``.
DEFAULT_METHOD = "msm"


def available_methods() -> list[str]:
    """Names of all methods in :data:`METHODS`."""
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """The table row of ``name``; MrimsmError naming the choices otherwise."""
    if name not in METHODS:
        raise MrimsmError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def default_method() -> str:
    """:data:`DEFAULT_METHOD`."""
    return DEFAULT_METHOD
