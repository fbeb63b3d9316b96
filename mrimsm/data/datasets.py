"""torch Datasets over prepared data.

:class:`MeasurementDataset` reads the shards (:mod:`mrimsm.data.shards`) that
``mrimsm prep-fastmri`` (or :func:`mrimsm.data.prep.prepare_simulated_dataset`) wrote, lazily, one slice
per item. The training split exposes only what an acquisition gives: masked
noisy k-space, its mask, the ESPIRiT maps estimated from it and the volume
scale. A validation split may add the reference image, under its own key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from mrimsm.data.shards import SPLITS, open_shard, shard_params_hash
from mrimsm.errors import MrimsmError

__all__ = ["MeasurementDataset", "collate", "read_manifest", "open_shard", "SPLITS"]

#: keys a training item may have (structural guarantee: no reference data)
TRAIN_KEYS = frozenset({"y", "mask", "maps", "scale", "index"})


_REWRITE = "re-run mrimsm prep-fastmri to rewrite it"
_REBUILD = "re-run mrimsm prep-fastmri with --overwrite to rewrite it"


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type ("a list", "a string", ...)."""
    for types, name in ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
                        ((int, float), "a number")):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def _manifest_problem(manifest: Any) -> Optional[str]:
    """What is wrong with a parsed ``manifest.json`` (``None``: nothing): the structure
    the readers rely on (an object; ``shards`` a list of objects with a ``shard`` path
    inside the data directory and a ``split``; ``inputs`` a list; ``size`` an integer;
    ``params_hash`` a string; ``mask`` an object with a numeric ``accel``)."""
    if not isinstance(manifest, dict):
        return f"the top level is {_kind(manifest)}, not an object"
    shards = manifest.get("shards")
    if shards is None:
        return "it has no 'shards' list"
    if not isinstance(shards, list):
        return f"'shards' is {_kind(shards)}, not a list"
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            return f"shards[{i}] is {_kind(entry)}, not an object"
        if "shard" not in entry:
            return f"shards[{i}] has no 'shard' (the shard's path)"
        rel = entry["shard"]
        if not isinstance(rel, str) or not rel:
            return f"shards[{i}].shard is {_kind(rel)}, not a path"
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"shards[{i}].shard {rel!r} is not a path inside the data directory"
        if entry.get("split") not in SPLITS:
            return f"shards[{i}].split is {entry.get('split')!r}, not train or val"
    for key, types, name in (("inputs", list, "a list"), ("size", int, "an integer"),
                             ("params_hash", str, "a string"), ("mask", dict, "an object")):
        value = manifest.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"'{key}' is {_kind(value)}, not {name}"
    accel = (manifest.get("mask") or {}).get("accel")
    if accel is not None and (isinstance(accel, bool) or not isinstance(accel, (int, float))):
        return f"'mask.accel' is {_kind(accel)}, not a number"
    return None


def read_manifest(root: str | os.PathLike, hint: Optional[str] = _REBUILD) -> dict:
    """The parsed ``root/manifest.json`` of a prepared data directory, validated.

    The one reader of manifests (datasets, training, prep's checks of an existing
    OUT_DIR): a missing, unreadable, non-JSON or malformed file (see
    :func:`_manifest_problem`) is one :class:`MrimsmError` line naming it and what is
    wrong, ending with ``hint`` (``None``: the caller adds its own).
    """
    root = Path(root)
    mpath = root / "manifest.json"
    tail = f"; {hint}" if hint else ""
    if not mpath.is_file():
        raise MrimsmError(f"no manifest.json in {root}: not a prepared data directory (run mrimsm prep-fastmri)")
    try:
        text = mpath.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MrimsmError(f"unreadable manifest {mpath}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MrimsmError(f"unreadable manifest {mpath}: not JSON (not UTF-8 text){tail}") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise MrimsmError(f"unreadable manifest {mpath}: not JSON ({msg}{where}){tail}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise MrimsmError(f"malformed manifest {mpath}: {problem}{tail}")
    return manifest


def _corrupt(path: Path, exc: BaseException) -> MrimsmError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return MrimsmError(f"truncated or corrupt shard: {path} ({reason}); {_REWRITE}")


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
        self.manifest = read_manifest(self.root)
        params_hash = self.manifest.get("params_hash")
        self._shards: list[Path] = []
        self._index: list[tuple[int, int]] = []
        masks, self.sources, self.acquisitions = [], [], []
        acquisition_of = {str(e.get("file")): str(e.get("acquisition") or "") for e in self.manifest.get("inputs", [])
                          if isinstance(e, dict)}
        for entry in self.manifest["shards"]:
            if entry["split"] != split:
                continue
            path = self.root / entry["shard"]
            with open_shard(path) as f:
                try:
                    m = f["mask"][()].astype(bool)
                    slices = f["slice_index"][()]
                    source = f.attrs.get("source_file", entry.get("name", path.name))
                    shard_hash = shard_params_hash(f)
                except (OSError, KeyError, RuntimeError, ValueError) as exc:
                    raise _corrupt(path, exc) from None
            if params_hash is not None and shard_hash is not None and shard_hash != params_hash:
                raise MrimsmError(
                    f"{path} was prepared with other parameters (params_hash {shard_hash}) than {mpath} records "
                    f"({params_hash}): the data set mixes two prep runs; re-run mrimsm prep-fastmri with --overwrite "
                    f"to rebuild it"
                )
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
            f = self._files[k] = open_shard(self._shards[k])
        return f

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One slice (see the class doc). A shard that cannot be read (truncated or
        corrupted since the data set was opened, locked by a writer) is one
        :class:`MrimsmError` line naming it."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        k, i = self._index[index]
        f = self._file(k)
        try:
            item = {
                "y": torch.from_numpy(np.ascontiguousarray(f["y"][i], dtype=np.complex64)),
                "mask": torch.from_numpy(self.masks[index].astype(np.float32)).view(1, 1, -1),
                "maps": torch.from_numpy(np.ascontiguousarray(f["maps"][i], dtype=np.complex64)),
                "scale": float(f["scale"][i]),
                "index": int(index),
            }
            if self.split == "val" and "reference" in f:
                item["reference"] = torch.from_numpy(np.ascontiguousarray(f["reference"][i], dtype=np.complex64))
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise _corrupt(self._shards[k], exc) from None
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
