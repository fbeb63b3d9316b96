"""prep's side of the shards (:mod:`mrimsm.data.shards` holds the format): write a
prepared volume, tell a finished shard from one to redo, summarize a resumed one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mrimsm.data.fastmri_io import FileLockedError
from mrimsm.data.prep.volume import espirit_settings
from mrimsm.data.shards import open_shard, shard_params_hash, write_shard
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import encoded_acceleration

if TYPE_CHECKING:
    from mrimsm.data.prep.plan import PrepTask

__all__ = ["write_volume_shard", "shard_done", "recorded_params_hash", "summary_from_shard"]


def write_volume_shard(path: Path, result: dict, task: PrepTask) -> None:
    """Write the :func:`~mrimsm.data.prep.volume.prepare_training_volume` ``result`` of
    ``task`` to ``path`` (atomically)."""
    write_shard(path, result, {
        "split": task.split, "source_file": task.name, "source_sha256": task.sha256,
        "params_hash": task.params_hash, "noise_measured": result["noise_measured"],
        "noise_total": result["noise_total"], "encoded_columns": result.get("encoded"),
    })


def recorded_params_hash(path: Path) -> Optional[str]:
    """The ``params_hash`` a shard file records (``None``: no such attribute, or not a
    readable HDF5 file: then it is not known to be another run's; a locked one stops
    the run)."""
    try:
        with open_shard(path) as f:
            return shard_params_hash(f)
    except FileLockedError:
        raise
    except (MrimsmError, OSError):
        return None


def shard_done(path: Path, params_hash: str, sha: str) -> bool:
    """Whether ``path`` is a finished shard of these parameters from these input bytes
    (a truncated or corrupt one is not: it is redone; a locked one stops the run)."""
    if not path.is_file():
        return False
    try:
        with open_shard(path) as f:
            return shard_params_hash(f) == params_hash and f.attrs.get("source_sha256") == sha
    except FileLockedError:
        raise
    except (MrimsmError, OSError):
        return False


def summary_from_shard(task: PrepTask) -> dict:
    """The summary of a shard finished by an earlier run (as
    :func:`mrimsm.data.prep.worker.run_task` returns it for a new one)."""
    with open_shard(task.out_dir / task.shard_rel) as f:
        masks = f["mask"][()]
        noise = {k: float(f.attrs[k]) for k in ("noise_measured", "noise_total") if k in f.attrs}
        encoded = tuple(int(c) for c in f.attrs["encoded_columns"]) if "encoded_columns" in f.attrs else None
        return {
            **noise,
            "name": task.name,
            "shard": task.shard_rel,
            "split": task.split,
            "num_slices": int(masks.shape[0]),
            "slices": [int(s) for s in f["slice_index"][()]],
            "scale": float(f["scale"][0]),
            "achieved_acceleration": encoded_acceleration(masks, encoded),
            "encoded_columns": None if encoded is None else list(encoded),
            "espirit": espirit_settings(masks, task.options),
            "resumed": True,
        }
