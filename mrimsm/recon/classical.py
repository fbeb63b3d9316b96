"""The classical methods of ``mrimsm recon``: zero-filled, CG-SENSE and CS-L1-wavelet."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from mrimsm.baselines import classical
from mrimsm.errors import MrimsmError
from mrimsm.recon.methods import MethodOutput, ReconMethod, SliceBatch

__all__ = ["make_zero_filled", "make_sense", "make_cs"]


def make_zero_filled(options: Mapping[str, Any]) -> ReconMethod:
    """``A^H y`` with the batch's coil maps (no options)."""

    def method(batch: SliceBatch) -> MethodOutput:
        return MethodOutput(classical.zero_filled(batch.kspace, batch.mask, batch.maps))

    method.settings = {}  # what the output depends on (recorded in it; no options)
    return method


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


def _regularized(options: Mapping[str, Any], name: str, solve: Callable[..., Any], lamda: float,
                 iters: int) -> ReconMethod:
    """A method that runs ``solve(kspace, mask, maps, lamda=, max_iter=)`` with the
    options ``<name>_lambda`` / ``<name>_iters`` (checked; defaults ``lamda`` / ``iters``)."""
    lamda, iters = _lambda_and_iters(options, name, lamda, iters)

    def method(batch: SliceBatch) -> MethodOutput:
        images = solve(batch.kspace, batch.mask, batch.maps, lamda=lamda, max_iter=iters)
        return MethodOutput(images, info={"iterations": iters, "lambda": lamda})

    method.settings = {"lambda": lamda, "iters": iters}
    return method


def make_sense(options: Mapping[str, Any]) -> ReconMethod:
    """CG-SENSE (Tikhonov); options ``sense_lambda``, ``sense_iters``."""
    return _regularized(options, "sense", classical.sense, classical.SENSE_LAMBDA, classical.SENSE_ITERS)


def make_cs(options: Mapping[str, Any]) -> ReconMethod:
    """L1-wavelet CS (FISTA); options ``cs_lambda``, ``cs_iters``."""
    return _regularized(options, "cs", classical.cs_l1_wavelet, classical.DEFAULT_LAMBDA, classical.DEFAULT_ITERS)
