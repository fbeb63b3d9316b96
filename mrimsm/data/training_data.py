"""The training data of the MRI methods: prepared measurement shards, or a simulated
set built into the cache on first use.

:func:`measurement_data` is what :meth:`mrimsm.trainmethod.TrainMethod.build_dataset`
returns by default: a :class:`DataBundle` over the shards of ``cfg.data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from mrimsm import distributed
from mrimsm.data.datasets import MeasurementDataset, collate, read_manifest
from mrimsm.data.prep import prepare_simulated_dataset
from mrimsm.errors import MrimsmError

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = ["DataBundle", "default_cache_dir", "ensure_simulated_dataset", "measurement_data"]


@dataclass
class DataBundle:
    """What a method's ``build_dataset`` returns.

    ``dataset[i]`` is one example (a dict); ``collate(list_of_items)`` makes a
    batch dict; ``info`` describes the data for the method and the checkpoint
    (``root``, ``num_examples``, ``manifest`` ...).
    """

    dataset: Any
    collate: Callable[[list], dict]
    info: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$MRIMSM_CACHE`` or ``~/.cache/mrimsm``."""
    env = os.environ.get("MRIMSM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mrimsm"


def _simulated_dir(cfg: Config) -> Path:
    sim = cfg.data.simulated
    base = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    cl = "auto" if sim.center_lines is None else str(sim.center_lines)
    name = f"sim-{sim.size}px-{sim.num_coils}c-r{sim.accel:g}-cl{cl}-rho{sim.rho:g}-seed{sim.seed}"
    if sim.pixel != "fit":
        name += f"-{sim.pixel}"
    if [float(x) for x in sim.scales] != [1.0]:
        name += "-x" + "_".join(f"{float(x):g}" for x in sim.scales)
    return base / name


def _manifest_complete(root: Path) -> bool:
    try:
        return bool(read_manifest(root).get("complete"))
    except MrimsmError:
        return False


def ensure_simulated_dataset(cfg: Config, dist_info: distributed.DistInfo, echo: Callable[[str], None] = print,
                             workers: int = 1) -> Path:
    """Build ``data.simulated`` into the cache on first use; return its directory.

    Rank 0 runs :func:`mrimsm.data.prep.prepare_simulated_dataset` (``workers``
    processes; the result does not depend on it), which writes its shards
    atomically, resumes a build that was killed and returns at once for a
    finished one; the other ranks wait.
    """
    out = _simulated_dir(cfg)
    if dist_info.is_main:
        sim = cfg.data.simulated
        if not _manifest_complete(out):
            echo(f"building the simulated training set in {out} (first use; a few minutes) ...")
        out.parent.mkdir(parents=True, exist_ok=True)
        prepare_simulated_dataset(
            out, size=sim.size, num_coils=sim.num_coils, accel=sim.accel, rho=sim.rho, seed=sim.seed,
            center_lines=sim.center_lines, pixel=sim.pixel, scales=sim.scales, workers=max(1, int(workers)),
        )
    distributed.barrier(dist_info)
    return out


def measurement_data(cfg: Config, dist_info: distributed.DistInfo) -> DataBundle:
    """The multi-coil measurement shards of ``cfg.data`` (building simulated ones if asked)."""
    if cfg.data.simulated is None:
        root = Path(cfg.data.root).expanduser()
        if not root.exists():
            raise MrimsmError(f"data directory {str(root)!r} does not exist")
    else:
        root = ensure_simulated_dataset(cfg, dist_info)
    dataset = MeasurementDataset(root, split=cfg.data.split)
    if len(dataset) == 0:
        raise MrimsmError(f"{root} holds no {cfg.data.split} examples")
    manifest = dataset.manifest  # read and validated once (read_manifest)
    rho = data_noise(manifest)
    if rho is None and cfg.data.simulated is not None:
        rho = cfg.data.simulated.rho
    info = {
        "root": str(root),
        "split": cfg.data.split,
        "num_examples": len(dataset),
        "manifest": manifest,
        "rho": None if rho is None else float(rho),
        "example": dataset[0],
        "train_masks": _training_masks(dataset, manifest),
    }
    return DataBundle(dataset, collate, info)


def data_noise(manifest: Any) -> Optional[float]:
    """The training measurements' noise std per real component, as their manifest records
    it: the measured total (``noise.total``: the raw data's own noise plus the added
    ``rho``, :mod:`mrimsm.data.prep`) when present, else the added ``rho`` alone (sets
    prepared before the noise was measured), else ``None``."""
    if not isinstance(manifest, dict):
        return None
    noise = manifest.get("noise")
    total = noise.get("total") if isinstance(noise, dict) else None
    value = total if isinstance(total, (int, float)) and not isinstance(total, bool) else manifest.get("rho")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _training_masks(dataset: Any, manifest: dict) -> Optional[torch.Tensor]:
    """``(N, W)`` bool masks of the training acquisitions: from the dataset when it
    offers them cheaply (``dataset.masks``), else by reading the items when the
    manifest does not name the mask family (small data sets only)."""
    masks = getattr(dataset, "masks", None)
    if masks is None and not isinstance(manifest.get("mask"), dict) and len(dataset) <= 5000:
        masks = [dataset[i]["mask"] for i in range(len(dataset))]
    if masks is None:
        return None

    def squeeze(m: Any) -> torch.Tensor:  # (1, 1, W) -> (W,), (1, H, W) -> (H, W)
        t = torch.as_tensor(np.asarray(m))
        while t.dim() > 1 and t.shape[0] == 1:
            t = t[0]
        return t

    return torch.stack([squeeze(m) for m in masks]).bool()
