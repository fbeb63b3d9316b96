"""torch Datasets over prepared data.

:class:`MeasurementDataset` reads the shards that ``mrimsm prep-fastmri`` (or
:func:`mrimsm.data.prep.prepare_simulated_dataset`) wrote, lazily, one slice
per item. The training split exposes only what an acquisition gives: masked
noisy k-space, its mask, the ESPIRiT maps estimated from it and the volume
scale. A validation split may add the reference image, under its own key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from mrimsm.errors import MrimsmError

__all__ = ["MeasurementDataset", "collate", "SPLITS"]

SPLITS = ("train", "val")

#: keys a training item may have (structural guarantee: no reference data)
TRAIN_KEYS = frozenset({"y", "mask", "maps", "scale", "index"})


class MeasurementDataset(Dataset):
    """Prepared multi-coil measurements, one slice per item.

    Args:
        root: a prepared directory (holds ``manifest.json``, ``train/``, ``val/``).
        split: ``"train"`` or ``"val"``.

    Item (a dict)::

        y          (C, H, W) complex64   masked noisy k-space (zeros off the mask)
        mask       (1, 1, W) float32     the acquisition's column mask
        maps       (C, H, W) complex64   ESPIRiT maps, sum_c |C_c|^2 = 1 in the support
        scale      float                 volume normalization (input = normalized / scale)
        index      int                   position in this split
        reference  (H, W) complex64      val split only, evaluation only

    Attributes:
        masks: ``(N, W)`` bool numpy array of every item's mask (cheap, read at init).
        sources: ``[(source file, slice index)]`` per item.
        manifest: the parsed ``manifest.json``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise MrimsmError(f"unknown split {split!r}; use train or val")
        self.root = Path(root)
        self.split = split
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise MrimsmError(f"no manifest.json in {self.root}: not a prepared data directory (run mrimsm prep-fastmri)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise MrimsmError(f"unreadable manifest {mpath}: {exc}") from None
        self._shards: list[Path] = []
        self._index: list[tuple[int, int]] = []
        masks, self.sources, self.acquisitions = [], [], []
        acquisition_of = {str(e.get("file")): str(e.get("acquisition") or "") for e in self.manifest.get("inputs", [])
                          if isinstance(e, dict)}
        for entry in self.manifest.get("shards", []):
            if entry.get("split") != split:
                continue
            path = self.root / entry["shard"]
            try:
                with h5py.File(path, "r") as f:
                    m = f["mask"][()].astype(bool)
                    slices = f["slice_index"][()]
                    source = f.attrs.get("source_file", entry.get("name", path.name))
            except (OSError, KeyError):
                raise MrimsmError(f"missing or corrupt shard {path}; re-run mrimsm prep-fastmri to resume") from None
            k = len(self._shards)
            self._shards.append(path)
            acquisition = acquisition_of.get(str(entry.get("name", path.name)), "")
            for i in range(m.shape[0]):
                self._index.append((k, i))
                self.sources.append((str(source), int(slices[i])))
                self.acquisitions.append(acquisition)
            masks.append(m)
        w = int(self.manifest.get("size", 0))
        self.masks = np.concatenate(masks) if masks else np.zeros((0, w), dtype=bool)
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._index)

    def flippable(self, exclude: Sequence[str]) -> np.ndarray:
        """``(N,)`` bool: the examples whose acquisition (from the manifest's ``inputs``)
        starts with none of the ``exclude`` prefixes (unknown acquisitions are flippable)."""
        return np.array([not any(a.startswith(p) for p in exclude) for a in self.acquisitions], dtype=bool)

    def _file(self, k: int) -> h5py.File:
        if os.getpid() != self._pid:  # a DataLoader worker: own handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(k)
        if f is None:
            f = self._files[k] = h5py.File(self._shards[k], "r")
        return f

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        k, i = self._index[index]
        f = self._file(k)
        item = {
            "y": torch.from_numpy(np.ascontiguousarray(f["y"][i], dtype=np.complex64)),
            "mask": torch.from_numpy(self.masks[index].astype(np.float32)).view(1, 1, -1),
            "maps": torch.from_numpy(np.ascontiguousarray(f["maps"][i], dtype=np.complex64)),
            "scale": float(f["scale"][i]),
            "index": int(index),
        }
        if self.split == "val" and "reference" in f:
            item["reference"] = torch.from_numpy(np.ascontiguousarray(f["reference"][i], dtype=np.complex64))
        return item

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state


def collate(items: Sequence[dict]) -> dict[str, Any]:
    """Stack items into a batch: tensors gain a leading ``B`` dim (``y`` ``(B, C, H, W)``,
    ``mask`` ``(B, 1, 1, W)``, ``maps`` ``(B, C, H, W)``, ``reference`` ``(B, H, W)``);
    ``scale`` becomes ``(B,)`` float32 and ``index`` ``(B,)`` int64."""
    if not items:
        raise ValueError("collate needs at least one item")
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.tensor(values, dtype=torch.int64)
        elif isinstance(values[0], float):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out


from mrimsm.data.images import ImageFolderDataset  # noqa: E402,F401
