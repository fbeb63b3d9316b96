"""The ``ssdu`` method of ``mrimsm recon``: the SSDU unrolled network on every acquired line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mrimsm.baselines import ssdu
from mrimsm.errors import MrimsmError
from mrimsm.inference import load_ssdu
from mrimsm.recon.methods import MethodOutput, ReconMethod, SliceBatch
from mrimsm.utils import resolve_device

__all__ = ["make_ssdu_method"]


def _checkpoint_option(options: Mapping[str, Any]) -> Path:
    path = options.get("ssdu_checkpoint") or (options.get("checkpoints") or {}).get("ssdu")
    if path:
        return Path(path)
    if ssdu.DEFAULT_CHECKPOINT.is_file():
        return ssdu.DEFAULT_CHECKPOINT
    raise MrimsmError(
        "no SSDU checkpoint: pass --ssdu-checkpoint, or train one with "
        "`mrimsm train --method ssdu configs/ssdu_tiny.yaml`"
    )


def make_ssdu_method(options: Mapping[str, Any]) -> ReconMethod:
    """The recon pipeline's factory: ``options["ssdu_checkpoint"]`` (or
    ``options["checkpoints"]["ssdu"]``, else :data:`DEFAULT_CHECKPOINT`) and
    ``options["device"]`` (:func:`~mrimsm.utils.resolve_device`; default: CUDA when
    present). The method reconstructs each batch with every acquired line (``Theta`` =
    the acquisition mask); the network is fully convolutional, so any image size works. Reports ``nfe_per_slice`` (regulariser calls) and
    ``cg_iters_per_slice``.
    """
    device = resolve_device(options.get("device"))
    loaded = load_ssdu(_checkpoint_option(options), device=device)
    net = loaded.model
    info = {
        "nfe_per_slice": net.num_unrolls,
        "cg_iters_per_slice": net.num_unrolls * net.dc.cg_iters,
        "checkpoint": loaded.path,
        "checkpoint_step": loaded.step,
    }

    def method(batch: SliceBatch) -> MethodOutput:
        x = loaded.reconstruct(batch.kspace.to(device), batch.maps.to(device), batch.mask.to(device))
        return MethodOutput(x.cpu(), info=dict(info))

    method.settings = {"ssdu_checkpoint": str(loaded.path)}  # recorded in each output (with its hash)
    return method
