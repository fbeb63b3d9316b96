"""The classical methods of ``mrimsm recon``: zero-filled, CG-SENSE and CS-L1-wavelet."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from mrimsm.baselines import classical
from mrimsm.errors import MrimsmError
from mrimsm.recon.methods import MethodBase, MethodOutput, SliceBatch

__all__ = ["ZeroFilled", "SenseRecon", "CSRecon"]


class ZeroFilled(MethodBase):
    """``A^H y`` with the batch's coil maps (no options)."""

    name = "zero-filled"
    batch_slices = 64

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.settings: dict = {}  # what the output depends on (recorded in it): nothing

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        return MethodOutput(classical.zero_filled(batch.kspace, batch.mask, batch.maps))


def _lambda_and_iters(options: Mapping[str, Any], name: str, lamda: float, iters: int) -> tuple[float, int]:
    """``options[name + "_lambda"]`` and ``options[name + "_iters"]``, checked, with defaults."""
    given_lambda, given_iters = options.get(f"{name}_lambda"), options.get(f"{name}_iters")
    lamda = lamda if given_lambda is None else float(given_lambda)
    iters = iters if given_iters is None else int(given_iters)
    if not (math.isfinite(lamda) and lamda >= 0):
        raise MrimsmError(f"--{name}-lambda must be a number >= 0, got {lamda}")
    if iters < 1:
        raise MrimsmError(f"--{name}-iters must be >= 1, got {iters}")
    return lamda, iters


class _Regularized(MethodBase):
    """A method that runs ``solve(kspace, mask, maps, lamda=, max_iter=)`` with the options
    ``<name>_lambda`` / ``<name>_iters`` (checked; defaults :attr:`default_lambda` /
    :attr:`default_iters`)."""

    default_lambda: float
    default_iters: int

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.lamda, self.iters = _lambda_and_iters(options, self.name, self.default_lambda, self.default_iters)
        self.settings = {"lambda": self.lamda, "iters": self.iters}

    @staticmethod
    def solve(kspace: Any, mask: Any, maps: Any, lamda: float, max_iter: int) -> Any:
        raise NotImplementedError

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        images = self.solve(batch.kspace, batch.mask, batch.maps, lamda=self.lamda, max_iter=self.iters)
        return MethodOutput(images, info={"iterations": self.iters, "lambda": self.lamda})


class SenseRecon(_Regularized):
    """CG-SENSE (Tikhonov); options ``sense_lambda``, ``sense_iters``."""

    name = "sense"
    batch_slices = 16
    default_lambda = classical.SENSE_LAMBDA
    default_iters = classical.SENSE_ITERS
    solve: Callable[..., Any] = staticmethod(classical.sense)


class CSRecon(_Regularized):
    """L1-wavelet CS (FISTA); options ``cs_lambda``, ``cs_iters``."""

    name = "cs"
    batch_slices = 4
    default_lambda = classical.DEFAULT_LAMBDA
    default_iters = classical.DEFAULT_ITERS
    solve: Callable[..., Any] = staticmethod(classical.cs_l1_wavelet)
