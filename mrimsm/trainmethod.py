"""The interface every training method implements (:class:`TrainMethod`).

:func:`mrimsm.train.train` runs the loop; a method supplies its data, model, loss,
preview, checkpoint metadata and resume check. Which methods exist is the table
:data:`mrimsm.methods.TRAINING_METHODS`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from torch import nn

from mrimsm import distributed
from mrimsm.data.training_data import DataBundle, measurement_data
from mrimsm.errors import MrimsmError

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = ["TrainMethod", "DataBundle", "data_changes"]


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
    * ``check_resume(saved_config, path, saved_meta=, allow_data_change=)`` before
      resuming from the checkpoint ``path`` that was written with the config dict
      ``saved_config`` (and ``meta`` ``saved_meta``): raise
      :class:`~mrimsm.errors.MrimsmError` when the current config changes what the
      trained weights mean; return notes to print. The base class refuses other
      training data (:func:`data_changes`) unless ``allow_data_change``; a method that
      adds its own checks calls ``super().check_resume(...)``.

    ``config_sections`` names the method's own config sections (section name ->
    dataclass) besides the common ``data`` / ``train`` / ``sample``; ``data_sections``
    the sections that say which data it trains on (compared on resume).
    """

    config_sections: ClassVar[dict[str, type]] = {}
    data_sections: ClassVar[tuple[str, ...]] = ("data",)

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

    def data_meta(self) -> dict:
        """The checkpoint's ``meta["data"]``: where the training data came from (``root``,
        its resolved path, ``split``, ``num_examples``) and, for a prepared data set, the
        manifest's ``params_hash`` and prep ``params`` (compared on resume)."""
        info = self.data_info
        out = {k: info.get(k) for k in ("root", "split", "num_examples")}
        if info.get("root") is not None:
            out["root_resolved"] = str(Path(str(info["root"])).expanduser().resolve())
        manifest = info.get("manifest")
        if isinstance(manifest, dict) and isinstance(manifest.get("params_hash"), str):
            out["params_hash"] = manifest["params_hash"]
            if isinstance(manifest.get("params"), dict):
                out["prep_params"] = manifest["params"]
        return out

    def check_resume(self, saved_config: dict, path: Path, saved_meta: Optional[dict] = None,
                     allow_data_change: bool = False) -> list[str]:
        """Refuse to resume ``path`` on other training data than it was trained on
        (:func:`data_changes`: the ``data_sections`` keys, the ``--data`` directory, the
        prepared set's parameters), naming what changed; with ``allow_data_change`` (the
        ``--allow-data-change`` flag: fine-tuning) return a note instead. Returns the
        notes to print."""
        changes = data_changes(saved_config, saved_meta, self.cfg, self.data_info, self.data_sections)
        if not changes:
            return []
        what = "; ".join(changes)
        if not allow_data_change:
            raise MrimsmError(
                f"{path} was trained on other data ({what}); pass --allow-data-change to continue it on "
                f"this data (fine-tuning), or choose another --out"
            )
        return [f"note: {path} was trained on other data ({what}); continuing on this data (--allow-data-change)"]


#: data keys that do not change the data (where a simulated set is cached)
_SAME_DATA_KEYS = frozenset({"data.cache_dir"})


def _with_defaults(saved: Any, current: Any) -> Any:
    """``saved`` (a config section as a checkpoint stored it) with the keys a newer
    version added filled in from ``current``'s dataclass defaults, recursively."""
    if not (dataclasses.is_dataclass(current) and isinstance(saved, dict)):
        return saved
    out = dict(saved)
    for f in dataclasses.fields(current):
        if f.name in out:
            out[f.name] = _with_defaults(out[f.name], getattr(current, f.name))
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return "null" if value is None else str(value)


def _differences(old: Any, new: Any, key: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(k), new.get(k), f"{key}.{k}")
        return out
    return [] if old == new else [(key, old, new)]


def _same_root(old: Any, new: Any, old_resolved: Any) -> bool:
    """Whether two ``data.root`` values name the same directory (the old one as the
    checkpoint resolved it when it recorded that, else relative to the working directory)."""
    if old is None or new is None:
        return old is None and new is None
    then = Path(str(old_resolved)) if old_resolved else Path(str(old)).expanduser().resolve()
    return then == Path(str(new)).expanduser().resolve()


def data_changes(saved_config: dict, saved_meta: Optional[dict], cfg: Config, data_info: Optional[dict],
                 sections: tuple[str, ...] = ("data",)) -> list[str]:
    """``"key: old -> new"`` for each way the current training data differs from a
    checkpoint's: the ``sections`` of its config (keys a newer version added count as
    their defaults; ``data.root`` compared as a resolved path; ``data.cache_dir`` not
    compared), and the prepared set's ``params_hash`` (with the prep parameters that
    changed) when the checkpoint recorded it."""
    saved_config = saved_config if isinstance(saved_config, dict) else {}
    saved_data = (saved_meta or {}).get("data") if isinstance(saved_meta, dict) else None
    saved_data = saved_data if isinstance(saved_data, dict) else {}
    now = cfg.to_dict()
    changes = []
    for sec in sections:
        old = _with_defaults(saved_config.get(sec), getattr(cfg, sec, None))
        for key, before, after in _differences(old, now.get(sec), sec):
            if key in _SAME_DATA_KEYS:
                continue
            if key == "data.root" and _same_root(before, after, saved_data.get("root_resolved")):
                continue
            changes.append(f"{key}: {_show(before)} -> {_show(after)}")
    manifest = (data_info or {}).get("manifest")
    new_hash = manifest.get("params_hash") if isinstance(manifest, dict) else None
    old_hash = saved_data.get("params_hash")
    if isinstance(old_hash, str) and isinstance(new_hash, str) and old_hash != new_hash:
        params = [f"{k} {_show(b)} -> {_show(a)}" for k, b, a in
                  _differences(saved_data.get("prep_params") or {}, manifest.get("params") or {}, "")]
        detail = f" ({', '.join(p.lstrip('.') for p in params)})" if params else ""
        changes.append(f"the data set's prep params_hash: {old_hash} -> {new_hash}{detail}")
    return changes
