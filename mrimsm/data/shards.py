"""The shard format of a prepared data set: written by ``prep-fastmri``
(:mod:`mrimsm.data.prep`), read by :class:`mrimsm.data.datasets.MeasurementDataset`.

One HDF5 file per input volume, ``OUT_DIR/<split>/<file stem>.h5``::

    y            (N, C, H, W) complex64   masked noisy k-space, lzf, one chunk per slice
    maps         (N, C, H, W) complex64   ESPIRiT maps, lzf, one chunk per slice
    mask         (N, W) bool              each slice's column mask
    scale        (N,) float32             the volume's normalization (one value)
    slice_index  (N,) int32               the slices' indices in the input file
    reference    (N, H, W) complex64      val only (optional), lzf, one chunk per slice

    attrs: format, split, source_file, source_sha256, params_hash,
           noise_measured, noise_total
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import h5py
import numpy as np

from mrimsm.data.fastmri_io import FileLockedError, open_hdf5
from mrimsm.errors import MrimsmError
from mrimsm.utils import atomic_path

__all__ = ["FORMAT", "SPLITS", "ARRAYS", "shard_rel", "write_shard", "open_shard", "shard_params_hash",
           "list_shards"]

#: The ``format`` attribute of every shard (and the manifest's ``format``).
FORMAT = "mrimsm-prep/1"
#: The splits, each a folder of shards.
SPLITS = ("train", "val")
#: The arrays every shard holds (``reference`` is optional, validation only).
ARRAYS = ("y", "maps", "mask", "scale", "slice_index")

_REWRITE = "re-run mrimsm prep-fastmri to rewrite it"


def shard_rel(split: str, source_name: str) -> str:
    """The shard's path inside the data directory: ``"<split>/<stem of source_name>.h5"``."""
    return f"{split}/{Path(source_name).stem}.h5"


def write_shard(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write one shard atomically (the layout of the module doc).

    Args:
        path: the shard file.
        arrays: ``y``, ``maps``, ``mask``, ``scale``, ``slice_index`` and optionally
            ``reference``, with the shapes and dtypes of the module doc.
        attrs: ``split``, ``source_file``, ``source_sha256``, ``params_hash``,
            ``noise_measured``, ``noise_total`` (``format`` is added first) and, for a
            scan with zero-padded edge columns, ``encoded_columns`` ``[left, right]``.
    """
    n = arrays["y"].shape
    chunks = (1,) + tuple(n[1:])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("y", data=arrays["y"], chunks=chunks, compression="lzf")
            f.create_dataset("maps", data=arrays["maps"], chunks=chunks, compression="lzf")
            f.create_dataset("mask", data=arrays["mask"])
            f.create_dataset("scale", data=arrays["scale"])
            f.create_dataset("slice_index", data=arrays["slice_index"])
            if "reference" in arrays:
                f.create_dataset("reference", data=arrays["reference"], chunks=(1,) + tuple(n[2:]),
                                 compression="lzf")
            f.attrs["format"] = FORMAT
            for key in ("split", "source_file", "source_sha256", "params_hash", "noise_measured", "noise_total"):
                f.attrs[key] = attrs[key]
            if attrs.get("encoded_columns") is not None:
                f.attrs["encoded_columns"] = np.asarray(attrs["encoded_columns"], dtype=np.int64)


def open_shard(path: Path) -> h5py.File:
    """A prepared shard opened for reading; one MrimsmError line naming it when it is
    missing, truncated or corrupt (with how to rewrite it), or locked by a writer."""
    if not path.is_file():
        raise MrimsmError(f"missing shard {path}; {_REWRITE}")
    try:
        return open_hdf5(path, "r", what="shard")
    except FileLockedError:
        raise
    except MrimsmError as exc:
        raise MrimsmError(f"{exc}; {_REWRITE}") from None


def shard_params_hash(f: h5py.File) -> Optional[str]:
    """The ``params_hash`` an open shard records, as text (``None``: no such attribute)."""
    value = f.attrs.get("params_hash")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)


def list_shards(root: Path) -> list[Path]:
    """The shard files under ``root/{train,val}`` (regular files, no links), sorted."""
    return sorted(p for sub in SPLITS if (root / sub).is_dir()
                  for p in (root / sub).glob("*.h5") if p.is_file() and not p.is_symlink())
