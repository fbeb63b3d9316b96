"""The prep run end to end (:func:`prepare_dataset`): check, scan, plan, run, write
the manifest last."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

from mrimsm.data.prep.inputs import check_dirs, check_scan, read_slice_list, scan_inputs
from mrimsm.data.prep.manifest import build_manifest, collect_shards
from mrimsm.data.prep.options import PrepOptions
from mrimsm.data.prep.plan import check_existing, clear_old_output, plan_tasks
from mrimsm.data.prep.worker import run_tasks
from mrimsm.interrupt import raising_interrupts
from mrimsm.utils import atomic_path

__all__ = ["prepare_dataset"]


def prepare_dataset(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    opts: Optional[PrepOptions] = None,
    progress: Optional[Callable[[int], None]] = None,
    on_start: Optional[Callable[[int], None]] = None,
    on_warning: Optional[Callable[[str], None]] = None,
    extra_manifest: Optional[dict] = None,
) -> dict:
    """Run the prep pipeline (:mod:`mrimsm.data.prep`) from ``raw_dir`` into ``out_dir``.

    Args:
        raw_dir: directory of fastMRI multi-coil ``.h5`` files (not recursive).
        out_dir: output directory (created; must differ from ``raw_dir``).
        opts: :class:`PrepOptions` (defaults: R = 4 paper mask, rho 0, 256 x 256, AXT2).
        progress: called with the number of slices finished (e.g. ``tqdm.update``).
        on_start: called once with the number of slices to process.
        on_warning: called with a one-line message per skipped file
            (default :func:`warnings.warn`).
        extra_manifest: merged into the manifest (e.g. simulation settings).

    Returns:
        The manifest (also written to ``out_dir / "manifest.json"``).

    Raises:
        MrimsmError: bad options or directories, no file matching the filter, no
        usable file, a corrupt file under ``strict``, a slice list naming no file.
    """
    opts = opts or PrepOptions()
    opts.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    files = check_dirs(raw_dir, out_dir)
    missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # what this run creates
    try:
        with raising_interrupts():
            return _prepare(raw_dir, out_dir, files, opts, progress, on_start, on_warning, extra_manifest)
    except BaseException:
        if missing:
            _remove_if_empty(missing[-1])  # a failed first run leaves no empty OUT_DIR behind
        raise


def _prepare(raw_dir: Path, out_dir: Path, files: list[Path], opts: PrepOptions,
             progress: Optional[Callable[[int], None]], on_start: Optional[Callable[[int], None]],
             on_warning: Optional[Callable[[str], None]], extra_manifest: Optional[dict]) -> dict:
    """:func:`prepare_dataset` after its checks (``out_dir`` is created here, when needed):
    scan the inputs, plan one task per file, run the tasks, write the manifest."""
    warn = on_warning or (lambda msg: warnings.warn(msg, stacklevel=3))
    listed = read_slice_list(opts.slice_list) if opts.slice_list else None
    params_hash = opts.params_hash()
    inv = scan_inputs(files, opts, listed, warn)
    check_scan(inv, files, listed, raw_dir, opts, warn)
    stale = check_existing(out_dir, opts, params_hash)  # before anything is written
    tasks, resumed = plan_tasks(inv.planned, out_dir, opts, params_hash)
    if tasks or stale:
        clear_old_output(out_dir, stale, [p for p, _, _ in inv.planned])
    results = run_tasks(tasks, resumed, out_dir, opts.workers, progress, on_start)
    shards = collect_shards(results, inv, raw_dir, opts, warn)
    manifest = build_manifest(raw_dir, opts, params_hash, inv, shards, len(resumed))
    manifest.update(extra_manifest or {})
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def _remove_if_empty(root: Path) -> None:
    """Remove ``root`` and the directories below it if none of them holds a file."""
    if not root.is_dir() or any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    root.rmdir()
