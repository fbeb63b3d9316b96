"""What a prep run reads: the directories, the slice list (CSV) and each input file's
header, turned into an :class:`Inventory` of the files (and slices) to prepare."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from mrimsm.data.coil_compression import coils_note
from mrimsm.data.fastmri_io import FileLockedError, read_header
from mrimsm.data.prep.options import PrepOptions
from mrimsm.errors import MrimsmError
from mrimsm.limits import check_memory
from mrimsm.utils import check_output, file_sha256, is_hdf5_name, same_file

__all__ = ["Inventory", "read_slice_list", "select_slices", "check_dirs", "scan_inputs", "check_scan", "skip"]


@dataclass
class Inventory:
    """What the scan of the input files found (all of it goes into the manifest).

    Attributes:
        inputs: one entry per file found (name, size, status, ...).
        skipped: ``{"file", "reason"}`` per file that cannot be used.
        filtered: names of files of another acquisition.
        planned: ``(path, slices, entry)`` per file to prepare.
        matched: files of the asked-for acquisition (used or not).
        uncompressed: ``(name, coils)`` of planned files with no more coils than ``--coils``.
    """

    inputs: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    filtered: list = field(default_factory=list)
    planned: list = field(default_factory=list)
    matched: int = 0
    uncompressed: list = field(default_factory=list)


def read_slice_list(path: str) -> dict[str, list[int]]:
    """CSV rows ``file,slice`` (a header row is allowed) -> {file name: [slices]}."""
    p = Path(path)
    if not p.is_file():
        raise MrimsmError(f"slice list not found: {p}")
    out: dict[str, list[int]] = {}
    with open(p, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row if c.strip()]
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise MrimsmError(f"{p}:{lineno}: expected 'file,slice', got {','.join(row)!r}")
            try:
                s = int(row[1])
            except ValueError:
                if lineno == 1:
                    continue  # header
                raise MrimsmError(f"{p}:{lineno}: slice {row[1]!r} is not an integer") from None
            out.setdefault(Path(row[0]).name, []).append(s)
    if not out:
        raise MrimsmError(f"slice list {p} has no rows")
    return {k: sorted(set(v)) for k, v in out.items()}


def select_slices(num: int, opts: PrepOptions, listed: Optional[list[int]]) -> list[int]:
    """The slices of a ``num``-slice file to prepare: the listed ones that exist, else
    those left after the edge skips, the central ``--slices-per-volume`` of them."""
    if listed is not None:
        return [s for s in listed if 0 <= s < num]
    cand = list(range(opts.skip_first, num - opts.skip_last))
    k = opts.slices_per_volume
    if k is not None and len(cand) > k:
        start = (len(cand) - k) // 2
        cand = cand[start : start + k]
    return cand


def check_dirs(raw_dir: Path, out_dir: Path) -> list[Path]:
    """The ``.h5`` files of ``raw_dir``; MrimsmError when a directory is unusable or
    ``out_dir`` (or one of its split folders) is ``raw_dir``."""
    if not raw_dir.exists():
        raise MrimsmError(f"RAW_DIR does not exist: {raw_dir}")
    if not raw_dir.is_dir():
        raise MrimsmError(f"RAW_DIR is not a directory: {raw_dir}")
    files = sorted(p for p in raw_dir.iterdir() if is_hdf5_name(p) and p.is_file())
    if not files:
        raise MrimsmError(f"RAW_DIR holds no .h5 files: {raw_dir}")
    if same_file(out_dir, raw_dir):
        raise MrimsmError("OUT_DIR must differ from RAW_DIR (inputs are never overwritten)")
    for split in ("train", "val"):  # the shards go to OUT_DIR/<split>/<file stem>.h5
        if same_file(out_dir / split, raw_dir):
            raise MrimsmError(f"RAW_DIR {raw_dir} is OUT_DIR/{split}, where the shards go: they would replace "
                              f"the raw files; choose another OUT_DIR")
    check_output(out_dir, kind="dir", flag="OUT_DIR")  # created only once there is work to do
    return files


def skip(inv: Inventory, path: Path, reason: str, opts: PrepOptions, warn: Callable[[str], None],
         entry: Optional[dict] = None) -> None:
    """Record that ``path`` cannot be used (MrimsmError instead under ``--strict``)."""
    if opts.strict:
        raise MrimsmError(f"{reason} (--strict)")
    warn(f"skipping {path.name}: {reason}")
    inv.skipped.append({"file": path.name, "reason": reason})
    if entry is not None:
        entry["status"] = "skipped"


def _check_prep_memory(shape: Sequence[int], num_slices: int, path: Path, opts: PrepOptions) -> None:
    """MrimsmError (one line) when preparing ``num_slices`` slices of a file of k-space
    ``shape`` at ``--size`` would not fit in memory: the raw slices (complex64) and four
    ``(S, C, size, size)`` complex64 arrays alive together (target k-space, measurements,
    noise, coil maps), once per worker."""
    _, coils, h, w = (int(x) for x in shape)
    raw = float(num_slices) * coils * h * w * 8
    work = 4.0 * num_slices * coils * opts.size * opts.size * 8
    check_memory(int((raw + work) * opts.workers),
                 f"--size {opts.size}: preparing {path.name} ({num_slices} slice(s), {coils} coils)",
                 "lower --size or --workers")


def _scan_file(inv: Inventory, path: Path, opts: PrepOptions, listed: Optional[dict[str, list[int]]],
               warn: Callable[[str], None]) -> None:
    """Add one file to ``inv``: planned (with its slices and SHA-256), filtered, or skipped."""
    entry = {"file": path.name, "size": path.stat().st_size}
    inv.inputs.append(entry)
    if listed is not None and path.name not in listed:
        entry["status"] = "not in slice list"
        return
    try:
        head = read_header(path)
    except FileLockedError:
        raise  # not a bad file: skipping it would leave it out of the data set
    except MrimsmError as exc:
        skip(inv, path, str(exc), opts, warn, entry)
        return
    entry["acquisition"] = head["attrs"].get("acquisition")
    entry["num_slices"] = head["shape"][0]
    if opts.acquisition and entry["acquisition"] != opts.acquisition:
        entry["status"] = "filtered"
        inv.filtered.append(path.name)
        return
    inv.matched += 1
    if head["has_mask"]:
        skip(inv, path, f"{path} is already undersampled (has a 'mask'); prep needs fully sampled k-space",
             opts, warn, entry)
        return
    slices = select_slices(head["shape"][0], opts, None if listed is None else listed[path.name])
    if not slices:
        skip(inv, path, f"{path} has no slices left after the edge / list selection", opts, warn, entry)
        return
    _check_prep_memory(head["shape"], len(slices), path, opts)
    if coils_note(opts.coils, head["shape"][1]) is not None:
        inv.uncompressed.append((path.name, int(head["shape"][1])))
    entry["sha256"] = file_sha256(path)
    entry["status"] = "used"
    inv.planned.append((path, slices, entry))


def scan_inputs(files: list[Path], opts: PrepOptions, listed: Optional[dict[str, list[int]]],
                warn: Callable[[str], None]) -> Inventory:
    """Read each file's header: which files (and slices) to prepare, which are filtered
    out by ``--acquisition`` or the slice list, which cannot be used and why."""
    inv = Inventory()
    for path in files:
        _scan_file(inv, path, opts, listed, warn)
    if inv.uncompressed:
        first, num = inv.uncompressed[0]
        warn(coils_note(opts.coils, num, first) + (f" (nor for {len(inv.uncompressed) - 1} more file(s) with at most "
                                                   f"{opts.coils} coils)" if len(inv.uncompressed) > 1 else ""))
    return inv


def check_scan(inv: Inventory, files: list[Path], listed: Optional[dict[str, list[int]]], raw_dir: Path,
               opts: PrepOptions, warn: Callable[[str], None]) -> None:
    """MrimsmError when the scan leaves nothing to do (slice list naming no file, no file of
    the acquisition, no usable file); a warning for slice-list files that are missing."""
    if listed is not None:
        missing = sorted(set(listed) - {p.name for p in files})
        if len(missing) == len(listed):
            raise MrimsmError(f"no file of the slice list is in {raw_dir}")
        if missing:
            warn(f"the slice list names {len(missing)} file(s) not in {raw_dir}: {', '.join(missing[:5])}")
    if opts.acquisition and inv.matched == 0 and inv.filtered:
        found = sorted({str(e.get("acquisition")) for e in inv.inputs if "acquisition" in e})
        raise MrimsmError(
            f"no file in {raw_dir} matches --acquisition {opts.acquisition} (found: {', '.join(found) or 'none'})"
        )
    if not inv.planned:
        raise MrimsmError(f"no usable file in {raw_dir} ({len(inv.skipped)} skipped)")
