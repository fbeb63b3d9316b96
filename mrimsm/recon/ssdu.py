"""The ``ssdu`` method of ``mrimsm recon``: the SSDU unrolled network on every acquired line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mrimsm.diffusion import shipped
from mrimsm.errors import MrimsmError
from mrimsm.inference import load_ssdu
from mrimsm.recon.methods import MethodBase, MethodOutput, SliceBatch
from mrimsm.solver_settings import SSDUSettings
from mrimsm.utils import resolve_device

__all__ = ["SSDURecon"]


def _settings(options: Mapping[str, Any]) -> SSDUSettings:
    """:class:`~mrimsm.solver_settings.SSDUSettings` of the options: ``ssdu_checkpoint``, else
    ``checkpoints["ssdu"]``."""
    path = options.get("ssdu_checkpoint") or (options.get("checkpoints") or {}).get("ssdu")
    return SSDUSettings(checkpoint=Path(path) if path else None)


class SSDURecon(MethodBase):
    """``mrimsm recon --method ssdu``: ``options["ssdu_checkpoint"]`` (or
    ``options["checkpoints"]["ssdu"]``), else the shipped SSDU for the scan's size
    (:data:`mrimsm.diffusion.shipped.SHIPPED_SSDU`: 64 x 64, or sides 192-416 for the 256 x 256
    one; a one-line error for other sizes), and ``options["device"]``
    (:func:`~mrimsm.utils.resolve_device`; default: CUDA when present). It reconstructs
    each batch with every acquired line (``Theta`` = the acquisition mask); the network is
    fully convolutional, so a ``--ssdu-checkpoint`` model runs on any size.
    Reports ``nfe_per_slice`` (regulariser calls), ``cg_iters_per_slice`` and ``model``.
    """

    name = "ssdu"
    batch_slices = 8

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.device = resolve_device(options.get("device"))
        self.typed = _settings(options)
        self.explicit = self.typed.checkpoint
        self._models: dict = {}  # checkpoint path -> loaded model
        if self.explicit is not None:
            self._model(self.explicit)  # a bad --ssdu-checkpoint fails before any work
        elif not any(p.path.is_file() for p in shipped.SHIPPED_SSDU):
            raise MrimsmError(
                "no SSDU checkpoint: pass --ssdu-checkpoint, or train one with "
                "`mrimsm train --method ssdu configs/ssdu_tiny.yaml`"
            )
        # recorded in each output (with its hash): the model given, or every shipped one installed
        self.settings = ({"ssdu_checkpoint": str(self.explicit)} if self.explicit is not None else
                         {f"shipped_checkpoint {p.file}": str(p.path) for p in shipped.SHIPPED_SSDU if p.path.is_file()})

    def _model(self, path: Path) -> Any:
        if path not in self._models:
            self._models[path] = load_ssdu(path, device=self.device)
        return self._models[path]

    def reconstruct(self, batch: SliceBatch) -> MethodOutput:
        shape = tuple(batch.kspace.shape[-2:])
        prior = None if self.explicit is not None else shipped.choose_shipped_prior(
            shape, shipped.SHIPPED_SSDU, "SSDU", "--ssdu-checkpoint")
        loaded = self._model(self.explicit if prior is None else prior.path)
        net = loaded.model
        info = {
            "nfe_per_slice": net.num_unrolls,
            "cg_iters_per_slice": net.num_unrolls * net.dc.cg_iters,
            "checkpoint": loaded.path,
            "checkpoint_step": loaded.step,
            "model": (shipped.describe(prior, loaded.path, loaded.step, (prior.trained, prior.trained))
                      if prior is not None else f"{loaded.path} (step {loaded.step})"),
        }
        d = self.device
        x = loaded.reconstruct(batch.kspace.to(d), batch.maps.to(d), batch.mask.to(d))
        return MethodOutput(x.cpu(), info=info)
