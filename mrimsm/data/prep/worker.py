"""Running the tasks of a prep run: one input volume per task, read, prepared and
written as its shard, in this process or in worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mrimsm.data.fastmri_io import FileLockedError, encoded_region, read_multicoil
from mrimsm.data.prep import shards
from mrimsm.data.prep.plan import PrepTask
from mrimsm.data.prep.volume import prepare_training_volume
from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.interrupt import check_interrupt
from mrimsm.physics.masks import encoded_acceleration
from mrimsm.workers import process_map

__all__ = ["run_task", "run_tasks"]


def _drop_zero_slices(kspace: np.ndarray, slices: Sequence[int], name: str) -> tuple[np.ndarray, list, list]:
    """``(k-space, slice indices, dropped indices)`` without the slices whose k-space is
    all zero (nothing to learn from; they would also make the volume's scale meaningless).
    MrimsmError when no slice is left."""
    has_signal = [bool(np.any(k)) for k in kspace]
    if not any(has_signal):
        raise MrimsmError(f"{name}: every selected slice holds only zeros")
    kept = [int(s) for s, ok in zip(slices, has_signal) if ok]
    zero = [int(s) for s, ok in zip(slices, has_signal) if not ok]
    return (kspace if not zero else kspace[np.asarray(has_signal)]), kept, zero


def run_task(task: PrepTask, progress: Optional[Callable[[int], None]] = None) -> dict:
    """Read one input volume, prepare it, write its shard. Returns a summary: ``name``,
    ``shard``, ``split`` and either ``error`` (``fatal`` for a locked file) or the
    manifest's shard fields (``num_slices``, ``slices``, ``zero_slices``, ``scale``,
    ``achieved_acceleration`` (over the encoded columns), ``encoded_columns``, ``espirit``, ``noise_measured``, ``noise_total``)."""
    opts = task.options
    summary: dict = {"name": task.name, "shard": task.shard_rel, "split": task.split}
    try:
        f = read_multicoil(task.path, slices=list(task.slices))
        kspace, slices, zero = _drop_zero_slices(f.kspace, task.slices, task.name)
        if zero and progress is not None:
            progress(len(zero))
        res = prepare_training_volume(
            kspace, f.recon_size, slices, task.name, opts,
            reference=task.split == "val" and opts.keep_reference, progress=progress,
            encoded=encoded_region(f),
        )
        shards.write_volume_shard(task.shard_path, res, task)
    except FileLockedError as exc:
        summary["error"], summary["fatal"] = str(exc), True
        return summary
    except MrimsmError as exc:
        summary["error"] = str(exc)
        return summary
    summary.update(
        num_slices=len(slices),
        slices=list(slices),
        zero_slices=zero,
        scale=float(res["scale"][0]),
        achieved_acceleration=encoded_acceleration(res["mask"], res["encoded"]),
        encoded_columns=None if res["encoded"] is None else list(res["encoded"]),
        espirit=res["espirit"],
        noise_measured=res["noise_measured"],
        noise_total=res["noise_total"],
    )
    return summary


def _execute(tasks: list[PrepTask], workers: int, progress: Optional[Callable[[int], None]],
             results: list[dict]) -> list[dict]:
    """Run ``tasks``, appending each summary to ``results`` as it finishes (so an interrupt
    can tell what finished). On KeyboardInterrupt the workers are stopped at once (their
    shards are written atomically, so no partial file is left) and it propagates."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(run_task(t, progress))
            check_interrupt()
        return results

    def done(task: PrepTask, res: dict) -> None:
        results.append(res)
        if progress is not None:
            progress(len(task.slices))

    process_map(run_task, tasks, workers, on_result=done)
    return results


def run_tasks(tasks: list[PrepTask], resumed: list[PrepTask], out_dir: Path, workers: int,
              progress: Optional[Callable[[int], None]], on_start: Optional[Callable[[int], None]]) -> list[dict]:
    """Run ``tasks`` (in ``workers`` processes) and read the summaries of the ``resumed``
    shards. An interrupt becomes :class:`Interrupted` saying how many shards are on disk."""
    if on_start is not None:
        on_start(sum(len(t.slices) for t in tasks))
    results: list[dict] = []
    try:
        _execute(tasks, workers, progress, results)
    except KeyboardInterrupt:  # count the shards on disk: the signal may land after a write
        done = sum(t.done() for t in tasks)
        rest = len(tasks) - done
        raise Interrupted(
            f"{done} of {len(tasks)} files prepared this run ({len(resumed)} were already done), {rest} not; "
            f"their shards in {out_dir} are complete; rerun the same command to finish (no manifest.json yet)"
        ) from None
    for task in resumed:
        results.append(shards.summary_from_shard(task))
    return results
