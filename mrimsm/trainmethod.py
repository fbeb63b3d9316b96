"""The interface every training method implements (:class:`TrainMethod`).

:func:`mrimsm.train.train` runs the loop; a method supplies its data, model, loss,
preview, checkpoint metadata and resume check. Which methods exist is the table
:data:`mrimsm.methods.TRAINING_METHODS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
from torch import nn

from mrimsm import distributed
from mrimsm.data.training_data import DataBundle, measurement_data

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = ["TrainMethod", "DataBundle"]


class TrainMethod:
    """Base class of a training method.

    The loop constructs ``method = cls(cfg, data_info)`` after
    ``cls.build_dataset(cfg, dist_info)``, then calls:

    * ``build_model(cfg) -> nn.Module`` (the module whose weights are trained,
      EMA'd and checkpointed);
    * ``loss(model, batch, generator) -> (loss, logs)`` every step: ``model`` may
      be a DDP wrapper (call it, don't reach for attributes; use
      ``distributed.unwrap(model)`` for those), ``batch`` is the collated dict on
      the training device plus ``batch["step"]`` and ``batch["epoch"]`` (ints),
      ``generator`` a ``torch.Generator`` on the device seeded from
      ``(seed, rank, step)``; ``loss`` a scalar tensor averaged over the batch,
      ``logs`` a dict of floats / 0-d tensors to average into the log (the
      same keys on every rank: they are averaged across ranks);
    * ``preview(model, batch, generator) -> images or None`` with the EMA model
      every ``train.sample_every`` steps (rank 0 only); images ``(N, H, W)``
      complex/real or ``(N, K, H, W)`` real, saved as a PNG grid;
    * ``checkpoint_meta(cfg) -> dict`` stored as ``meta`` in each checkpoint
      (operator and mask settings; tensors allowed);
    * ``check_resume(saved_config, path)`` before resuming from the checkpoint ``path``
      that was written with the config dict ``saved_config``: raise
      :class:`~mrimsm.errors.MrimsmError` when the current config changes what the
      trained weights mean.

    ``config_sections`` names the method's own config sections (section name ->
    dataclass) besides the common ``data`` / ``train`` / ``sample``.
    """

    config_sections: ClassVar[dict[str, type]] = {}

    def __init__(self, cfg: Config, data_info: Optional[dict] = None):
        self.cfg = cfg
        self.data_info = dict(data_info or {})

    @classmethod
    def build_dataset(cls, cfg: Config, dist_info: distributed.DistInfo) -> DataBundle:
        """Training data; by default the prepared multi-coil measurement shards."""
        return measurement_data(cfg, dist_info)

    def build_model(self, cfg: Config) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def preview(self, model: nn.Module, batch: dict, generator: torch.Generator) -> Optional[torch.Tensor]:
        return None

    def checkpoint_meta(self, cfg: Config) -> dict:
        return {}

    def check_resume(self, saved_config: dict, path: Path) -> None:
        return None
