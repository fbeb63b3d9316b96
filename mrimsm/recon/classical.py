"""The classical methods of ``mrimsm recon``: zero-filled, CG-SENSE and CS-L1-wavelet."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from mrimsm.baselines import classical
from mrimsm.recon.methods import MethodBase, MethodOutput, SliceBatch
from mrimsm.solver_settings import CSSettings, SenseSettings, settings_from_options

__all__ = ["ZeroFilled", "SenseRecon", "CSRecon"]


class ZeroFilled(MethodBase):
    """``A^H y`` with the batch's coil maps (no options)."""

    name = "zero-filled"
    batch_slices = 64

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.settings: dict = {}  # what the output depends on (recorded in it): nothing

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        return MethodOutput(classical.zero_filled(batch.kspace, batch.mask, batch.maps))


class _Regularized(MethodBase):
    """A method that runs ``solve(kspace, mask, maps, lamda=, max_iter=)`` with its
    :attr:`settings_class` (``SenseSettings``, ``CSSettings``) built from the command's
    options (:func:`~mrimsm.solver_settings.settings_from_options`: ``<name>_lambda`` /
    ``<name>_iters``, checked by the fields' annotations, defaults where not given)."""

    settings_class: type

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.typed = settings_from_options(self.settings_class, options)
        self.lamda, self.iters = self.typed.lamda, self.typed.iters
        self.settings = {"lambda": self.lamda, "iters": self.iters}  # recorded in each output

    @staticmethod
    def solve(kspace: Any, mask: Any, maps: Any, lamda: float, max_iter: int) -> Any:
        raise NotImplementedError

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        images = self.solve(batch.kspace, batch.mask, batch.maps, lamda=self.lamda, max_iter=self.iters)
        return MethodOutput(images, info={"iterations": self.iters, "lambda": self.lamda})


class SenseRecon(_Regularized):
    """CG-SENSE (Tikhonov); :class:`~mrimsm.solver_settings.SenseSettings` (``sense_lambda``, ``sense_iters``)."""

    name = "sense"
    batch_slices = 16
    settings_class = SenseSettings
    solve: Callable[..., Any] = staticmethod(classical.sense)


class CSRecon(_Regularized):
    """L1-wavelet CS (FISTA); :class:`~mrimsm.solver_settings.CSSettings` (``cs_lambda``, ``cs_iters``)."""

    name = "cs"
    batch_slices = 4
    settings_class = CSSettings
    solve: Callable[..., Any] = staticmethod(classical.cs_l1_wavelet)
