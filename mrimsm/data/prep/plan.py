"""Planning and resuming a prep run: the train / val split, one :class:`PrepTask` per
input file (a shard finished with the same parameters is not redone), and what to do
with a data set of other parameters already in ``OUT_DIR``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrimsm.data.datasets import read_manifest
from mrimsm.data.prep.options import PrepOptions
from mrimsm.data.prep.shards import recorded_params_hash, shard_done
from mrimsm.data.shards import SPLITS, list_shards, shard_rel
from mrimsm.errors import MrimsmError

__all__ = ["PrepTask", "split_volumes", "plan_tasks", "check_existing", "clear_old_output"]


@dataclass(frozen=True)
class PrepTask:
    """One input file to prepare into one shard (what a worker process receives).

    Attributes:
        path: the input file.
        slices: the slice indices to prepare.
        split: ``"train"`` or ``"val"``.
        sha256: the input file's SHA-256 (recorded in the shard: resumes match it).
        params_hash: :meth:`PrepOptions.params_hash` of the run.
        out_dir: the data directory.
        options: the run's options.
    """

    path: Path
    slices: tuple[int, ...]
    split: str
    sha256: str
    params_hash: str
    out_dir: Path
    options: PrepOptions

    @property
    def name(self) -> str:
        """The input's file name (seeds its masks and noise)."""
        return self.path.name

    @property
    def shard_rel(self) -> str:
        """The shard's path inside ``out_dir``: ``"<split>/<file stem>.h5"``."""
        return shard_rel(self.split, self.path.name)

    @property
    def shard_path(self) -> Path:
        return self.out_dir / self.shard_rel

    def done(self) -> bool:
        """Whether its shard is on disk, finished with these parameters from these bytes."""
        return shard_done(self.shard_path, self.params_hash, self.sha256)


def split_volumes(names: list[str], val_fraction: float, seed: int) -> set[str]:
    """Names of the validation volumes: the ``round(f * n)`` (at least one when
    ``f > 0`` and ``n >= 2``) with the smallest seeded hash (stable per name)."""
    if val_fraction <= 0 or len(names) < 2:
        return set()
    n_val = min(len(names) - 1, max(1, int(round(val_fraction * len(names)))))
    ranked = sorted(names, key=lambda nm: hashlib.sha256(f"{seed}:split:{nm}".encode()).hexdigest())
    return set(ranked[:n_val])


def _check_shards_spare_inputs(out_dir: Path, inputs: list[Path]) -> None:
    """MrimsmError when a shard path ``OUT_DIR/{train,val}/<stem>.h5`` is one of the input
    files, by resolved path or by inode (links, bind mounts), before anything is written."""
    by_path = {p.resolve(): p for p in inputs}
    by_inode = {(st.st_dev, st.st_ino): p for p in inputs for st in [p.stat()]}
    for path in inputs:
        for sub in SPLITS:
            shard = out_dir / shard_rel(sub, path.name)
            hit = by_path.get(shard.resolve())
            if hit is None and shard.exists():
                st = shard.stat()
                hit = by_inode.get((st.st_dev, st.st_ino))
            if hit is not None:
                raise MrimsmError(f"the shard {shard} would replace the input {hit}; choose another OUT_DIR")


def plan_tasks(planned: list, out_dir: Path, opts: PrepOptions,
               params_hash: str) -> tuple[list[PrepTask], list[PrepTask]]:
    """One task per planned ``(path, slices, entry)`` file, split into train / val (the
    split goes into ``entry``); ``(to do, already done)``. Creates ``out_dir/train`` and
    ``out_dir/val`` and removes temporaries of a killed run."""
    val_names = split_volumes([p.name for p, _, _ in planned], opts.val_fraction, opts.seed)
    _check_shards_spare_inputs(out_dir, [p for p, _, _ in planned])
    for sub in SPLITS:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / sub).glob(".*.tmp"):
            stale.unlink()  # left by a killed run

    tasks: list[PrepTask] = []
    resumed: list[PrepTask] = []
    for path, slices, entry in planned:
        split = "val" if path.name in val_names else "train"
        entry["split"] = split
        task = PrepTask(path=Path(path), slices=tuple(int(s) for s in slices), split=split, sha256=entry["sha256"],
                        params_hash=params_hash, out_dir=out_dir, options=dataclasses.replace(opts))
        (resumed if task.done() else tasks).append(task)
    return tasks, resumed


def _changed_params(old: Any, new: dict) -> str:
    """``"accel 4.0 -> 8.0, ..."`` for the prep parameters that differ (``""``: unknown)."""
    if not isinstance(old, dict):
        return ""
    keys = [k for k in new if k in old and old[k] != new[k]] + [k for k in new if k not in old]
    return ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in keys[:6]) + (", ..." if len(keys) > 6 else "")


def check_existing(out_dir: Path, opts: PrepOptions, params_hash: str) -> list[Path]:
    """What ``OUT_DIR`` already holds, read only. MrimsmError (one line) when it holds a
    data set of other parameters (a manifest with another ``params_hash``, an unreadable
    manifest, shards recording another ``params_hash``) and ``opts.overwrite`` is not
    set; with it, the shards of other parameters, which :func:`clear_old_output`
    removes."""
    mpath = out_dir / "manifest.json"
    problem = ""
    if mpath.exists():
        try:
            old = read_manifest(out_dir, hint=None)
        except MrimsmError as exc:
            problem = f"{exc}, so {out_dir} is not a data set this run can resume"
        else:
            if old.get("params_hash") != params_hash:
                changed = _changed_params(old.get("params"), opts.params())
                problem = (f"{out_dir} holds a data set prepared with other parameters (params_hash "
                           f"{old.get('params_hash')}, this run {params_hash}{': ' + changed if changed else ''})")
    other = [p for p in list_shards(out_dir) if recorded_params_hash(p) not in (None, params_hash)]
    if other and not problem:
        problem = (f"{other[0]} was prepared with other parameters (params_hash {recorded_params_hash(other[0])}, "
                   f"this run {params_hash}; {len(other)} such shard(s) in {out_dir})")
    if problem and not opts.overwrite:
        raise MrimsmError(f"{problem}; pass --overwrite to replace it, or choose another OUT_DIR")
    return other


def clear_old_output(out_dir: Path, stale: list[Path], inputs: list[Path]) -> None:
    """Before the first new shard: delete ``manifest.json`` (an interrupted run never
    leaves a complete manifest beside shards it does not describe), then the ``stale``
    shards of other parameters (``--overwrite``; never an input file)."""
    with contextlib.suppress(FileNotFoundError):
        (out_dir / "manifest.json").unlink()
    inodes = {(st.st_dev, st.st_ino) for p in inputs for st in [p.stat()]}
    for shard in stale:
        st = shard.stat()
        if (st.st_dev, st.st_ino) not in inodes:
            shard.unlink()
