"""Many files: every HDF5 file (``.h5`` / ``.hdf5``, any case) of a directory through the
pipeline, skipping files already done, reporting bad ones, split across ``torchrun`` ranks
(rank ``r`` of ``N`` takes files ``r, r + N, ...``), and the per-file lines and summary the
command prints.

Runs that share an output directory do not do a file twice: each file is reconstructed
under a lock, ``OUT/.<name>.lock`` (:class:`OutputLock`: ``fcntl.flock`` on a file that
holds the owner's pid, so the kernel frees it when its process dies, however it dies),
and a run skips a file whose lock another process holds, saying so in its summary. The
lock file is removed when the file is finished, fails or is interrupted; one left by a
killed run is taken over."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from mrimsm.distributed import rank_info
from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.interrupt import check_interrupt, raising_interrupts
from mrimsm.recon.file import build_methods, reconstruct_one
from mrimsm.recon.methods import ReconMethod
from mrimsm.recon.options import ReconOptions
from mrimsm.recon.outputs import output_record, output_state, own_mask_record
from mrimsm.recon.volume import has_own_mask
from mrimsm.utils import check_output, is_hdf5_name, printable, same_file
from mrimsm.recon.progress import open_bar

def list_inputs(directory: Union[str, os.PathLike]) -> list[Path]:
    """The HDF5 files directly inside ``directory`` (names ending in
    :data:`~mrimsm.utils.HDF5_SUFFIXES`, any case), sorted by name (hidden files, e.g.
    unfinished atomic writes and locks, skipped)."""
    return _scan_inputs(Path(directory))[0]


def _scan_inputs(directory: Path) -> tuple[list[Path], list[Path]]:
    """``(inputs, others)``: :func:`list_inputs`, and the other (not hidden) regular files
    directly inside ``directory``, which a run skips and counts."""
    inputs, others = [], []
    for p in directory.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        (inputs if is_hdf5_name(p) else others).append(p)
    return sorted(inputs), sorted(others)


class OutputLock:
    """``OUT/.<input name>.lock``: this process is reconstructing that input.

    :meth:`acquire` opens the lock file and takes ``fcntl.flock`` on it without
    waiting; it holds the owner's pid for the message another run prints. The kernel
    releases a flock when its process ends (a crash, SIGKILL), so a lock file left by a
    dead run is simply taken over. :meth:`release` removes the file, then frees it.
    """

    def __init__(self, out_dir: Path, input_file: Path):
        self.path = Path(out_dir) / f".{input_file.name}.lock"
        self.fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Take the lock: ``None``, or, when another live process holds it, who (``"pid N"``)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the file may be removed and made again between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by another process
                holder = _read_pid(fd)
                os.close(fd)
                return f"pid {holder}" if holder else "another process"
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its owner removed it after we opened it: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return None
        return "another process"

    def release(self) -> None:
        """Remove the lock file and free the lock (a no-op when not held)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def files_for_rank(files: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """Rank ``r`` of ``N`` takes files ``r, r + N, r + 2N, ...`` (no communication needed)."""
    return list(files[rank::world_size])


def directory_outputs(input_file: Path, output_dir: Path, methods: Sequence[str]) -> dict[str, Path]:
    """Where a file of a directory run goes, in fastMRI's layout (same file name as
    the input): ``output_dir/<name>`` for one method, ``output_dir/<method>/<name>``
    for several."""
    if len(methods) == 1:
        return {methods[0]: output_dir / input_file.name}
    return {m: output_dir / m / input_file.name for m in methods}


@dataclass
class FileOutcome:
    """What happened to one file of a directory run.

    Attributes:
        path: the input file.
        status: ``"done"``, ``"skipped"`` (every output done before, same settings), ``"busy"``
            (another run holds its lock, :class:`OutputLock`: skipped) or ``"failed"``.
        outputs: method -> output path (written or found).
        message: why it failed (one line), or what was skipped.
        num_slices: slices reconstructed (0 unless done).
        metrics: method -> :func:`mrimsm.metrics.all_metrics` (when the file has a reference).
        seconds_per_slice: method -> its wall time per slice.
        seconds: wall time of the whole file (coil maps included).
    """

    path: Path
    status: str
    outputs: dict
    message: str = ""
    num_slices: int = 0
    metrics: dict = field(default_factory=dict)
    seconds_per_slice: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DirectoryReport:
    """What :func:`reconstruct_directory` did on this rank."""

    input_dir: Path
    output_dir: Path
    methods: list
    rank: int
    world_size: int
    num_files: int
    outcomes: list
    other_files: list = field(default_factory=list)  # files of input_dir that are not HDF5: skipped

    def with_status(self, status: str) -> list:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list:
        return self.with_status("failed")


def reconstruct_directory(
    input_dir: Union[str, os.PathLike],
    output_dir: Optional[Union[str, os.PathLike]],
    *args: Any,
    recon_options: Optional[ReconOptions] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    local_rank: Optional[int] = None,
    overwrite: bool = False,
    on_file: Optional[Callable[[FileOutcome], None]] = None,
    **kwargs: Any,
) -> DirectoryReport:
    """Reconstruct every HDF5 file (:func:`list_inputs`: ``.h5`` / ``.hdf5``, any case) of
    ``input_dir`` into ``output_dir``; other files are skipped and counted
    (:attr:`DirectoryReport.other_files`).

    Each file is reconstructed as by :func:`~mrimsm.recon.reconstruct_file` (same masks,
    seeds and outputs' content) into :func:`directory_outputs`. Each output records what
    made it (:func:`~mrimsm.recon.outputs.output_record`: method, accel, seed, method
    settings, checkpoint hash); a file is skipped only when every output opens cleanly,
    is complete and was made with the same record. An output that is broken (truncated,
    wrong slice count, NaN) is redone with a note; one made with other settings (or with
    no record) makes the run refuse before any work, unless ``overwrite``, which redoes
    everything. A file that cannot be reconstructed (corrupt, NaN, wrong size, ...) is
    reported in its :class:`FileOutcome` and the run goes on. Each file is done under its
    :class:`OutputLock`: a file another run (sharing ``output_dir``) is doing is skipped
    (status ``"busy"``), and one it finished meanwhile is not redone. SIGINT / SIGTERM
    stop the run with :class:`~mrimsm.errors.Interrupted` saying which files finished;
    no lock is left behind.
    Bad arguments (methods, options, ``accel``, directories) raise MrimsmError before
    any file is read. Under ``torchrun`` (``rank``/``world_size`` default to
    :func:`rank_info`) rank ``r`` takes files ``r, r + N, ...`` and, with CUDA, GPU
    ``local_rank``; no process group is needed.

    Args:
        input_dir: directory of fastMRI multi-coil files (not searched recursively).
        output_dir: where the outputs go (created; must not be ``input_dir``).
        recon_options: a :class:`~mrimsm.recon.ReconOptions`, or its fields instead, as for
            :func:`~mrimsm.recon.reconstruct_file`.
        on_file: called with each :class:`FileOutcome` as soon as the file is finished.
    """
    job = ReconOptions.of(recon_options, *args, **kwargs)
    src = Path(input_dir)
    out = _checked_directories(src, output_dir, job)
    env_rank, env_world, env_local = rank_info()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    local_rank = env_local if local_rank is None else int(local_rank)
    job = job.resolved()
    files, others = _scan_inputs(src)
    if not files:
        raise MrimsmError(f"no .h5 files (nor .hdf5, in any case) in {src}"
                          + (f"; {_other_files_note(others)}" if others else ""))
    opts, built = build_methods(job, local_rank)
    records = {m: output_record(m, built[m], opts, job) for m in job.methods}

    mine = files_for_rank(files, rank, world_size)
    plans = {path: _plan_file(path, out, records, overwrite) for path in mine}  # before any work
    refused = [(o, why) for todo, notes in plans.values() for o, why in notes if o is not None and why[0] == "!"]
    if refused:
        (first, why), more = refused[0], len(refused) - 1
        raise MrimsmError(
            f"{first} {why[1:]}; pass --overwrite to redo it, or choose another -o"
            + (f" ({more} more output(s) like it)" if more else "")
        )
    report = DirectoryReport(src, out, list(job.methods), rank, world_size, len(files), [], others)
    started = time.time()
    held: list[OutputLock] = []  # the lock of the file in flight (released whatever ends the run)
    try:
        with raising_interrupts(), open_bar(job.progress, "files", len(mine)) as bar:
            for path in mine:
                outcome = _locked_file(path, out, built, opts, job, plans[path], records, overwrite, started,
                                       held)
                report.outcomes.append(outcome)
                if on_file is not None:
                    on_file(outcome)
                bar.update(1)
                check_interrupt()
    except KeyboardInterrupt:
        _release_all(held)
        raise _interrupted(report, mine, out, records) from None
    finally:
        _release_all(held)
    return report


def _checked_directories(src: Path, output_dir: Optional[Union[str, os.PathLike]], job: ReconOptions) -> Path:
    """The output directory of :func:`reconstruct_directory`, checked with the input
    directory ``src`` and ``job``'s ``--png`` before any file is read (MrimsmError)."""
    if not src.is_dir():
        raise MrimsmError(f"no such directory: {src}")
    if output_dir is None:
        raise MrimsmError("a directory input needs -o OUTPUT_DIR")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise MrimsmError(f"with a directory input, -o must be a directory, got the file {out}")
    if same_file(src, out):
        raise MrimsmError(f"-o {out} is the input directory; choose another")
    check_output(out, kind="dir", inputs=[src])  # OUT must be writable
    if job.png_dir is not None:
        check_output(job.png_dir, kind="dir", flag="--png")
    return out


def _interrupted(report: DirectoryReport, mine: Sequence[Path], out: Path,
                 records: Mapping[str, dict]) -> Interrupted:
    """What :func:`reconstruct_directory` raises on SIGINT / SIGTERM: the files of ``mine``
    finished (the one in flight counts when all its outputs were written) and those left."""
    finished = len(report.outcomes)
    done = len(report.with_status("done"))
    if finished < len(mine):  # the signal may land after the file in flight was written
        flight = directory_outputs(mine[finished], out, list(records))
        if all(output_state(flight[m], records[m])[0] == "done" for m in records):
            finished, done = finished + 1, done + 1
    left = mine[finished:]
    busy = len(report.with_status("busy"))
    return Interrupted(
        f"{finished} of {len(mine)} files finished ({done} done, "
        f"{len(report.with_status('skipped'))} skipped, "
        + (f"{busy} left to another run, " if busy else "")
        + f"{len(report.failed)} failed); "
        f"{len(left)} not done ({left[0].name if left else '-'}{', ...' if len(left) > 1 else ''}); "
        f"outputs are written whole, so the same command finishes the rest"
    )


def _release_all(held: list) -> None:
    while held:
        held.pop().release()


def _locked_file(
    path: Path,
    out: Path,
    built: Mapping[str, ReconMethod],
    opts: Mapping[str, Any],
    job: ReconOptions,
    plan: tuple[list, list],
    records: Mapping[str, dict],
    overwrite: bool,
    started: float,
    held: list,
) -> FileOutcome:
    """:func:`_directory_file` under the file's :class:`OutputLock`; ``"busy"`` when another
    run holds it. Once the lock is held the file is planned again: another run may have
    finished it since this run's plan (with ``overwrite``: outputs it wrote since
    ``started``, the time this run began, with the same settings, are kept)."""
    lock = OutputLock(out, path)
    held.append(lock)  # before acquire: a signal during it still releases what it took
    holder = lock.acquire()
    if holder is not None:
        held.remove(lock)
        return FileOutcome(path, "busy", directory_outputs(path, out, list(records)),
                           f"another run is reconstructing it ({holder} holds {lock.path.name})")
    try:
        if plan[0]:
            plan = _replan(path, out, records, overwrite, started, plan)
        return _directory_file(path, out, built, opts, job, plan)
    finally:
        _release_all(held)


def _replan(path: Path, out: Path, records: Mapping[str, dict], overwrite: bool, started: float,
            plan: tuple[list, list]) -> tuple[list, list]:
    """The plan of ``path`` now that this run holds its lock (see :func:`_locked_file`)."""
    outputs = directory_outputs(path, out, list(records))
    if overwrite:
        try:
            fresh = all(outputs[m].stat().st_mtime >= started for m in records)
        except OSError:
            fresh = False
        if not fresh:
            return plan
    todo, notes = _plan_file(path, out, records, False)
    refused = [(o, why) for o, why in notes if why.startswith("!")]
    if overwrite and todo:
        return plan
    if refused:  # another run made it meanwhile with other settings: redo it only if asked
        return [], [(o, why) for o, why in notes]
    return todo, notes


def _input_slices(path: Path) -> Optional[int]:
    from mrimsm.data.fastmri_io import read_header

    try:
        return int(read_header(path)["shape"][0])
    except MrimsmError:
        return None  # a bad input fails when it is reconstructed


def _plan_file(path: Path, out: Path, records: Mapping[str, dict], overwrite: bool) -> tuple[list, list]:
    """``(methods to run, notes)`` for one input: an output is skipped only when
    :func:`~mrimsm.recon.outputs.output_state` finds it done; a broken one is redone
    (note ``(path, reason)``), one of other settings is redone with ``overwrite`` and
    otherwise refused (note ``(path, "!" + reason)``)."""
    outputs = directory_outputs(path, out, list(records))
    if overwrite:
        return list(records), []
    todo, notes = [], []
    slices: Any = ...
    own = False
    for m, record in records.items():
        if not outputs[m].exists():
            todo.append(m)
            continue
        if slices is ...:
            slices = _input_slices(path)
            own = has_own_mask(path)
        if own:
            record = own_mask_record(record)
        state, why = output_state(outputs[m], record, slices)
        if state == "done":
            continue
        todo.append(m)
        notes.append((outputs[m], why if state == "broken" else "!" + why))
    return todo, notes


def _directory_file(
    path: Path,
    out: Path,
    built: Mapping[str, ReconMethod],
    opts: Mapping[str, Any],
    job: ReconOptions,
    plan: tuple[list, list],
) -> FileOutcome:
    """One file of :func:`reconstruct_directory` as :func:`_plan_file` planned it, never
    raising for the file's own problems."""
    names = job.methods
    outputs = directory_outputs(path, out, names)
    todo, notes = plan
    refused = [(o, why[1:]) for o, why in notes if why.startswith("!")]
    if refused:
        o, why = refused[0]
        return FileOutcome(path, "failed", outputs, f"another run wrote {o.name} meanwhile; it {why}; "
                                                    f"pass --overwrite to redo it")
    if not todo:
        return FileOutcome(path, "skipped", outputs, "done before with the same settings")
    redone = "; ".join(f"redid {o.name}: it {why}" for o, why in notes)
    t0 = time.perf_counter()
    try:
        rep = reconstruct_one(path, {m: outputs[m] for m in todo}, {m: built[m] for m in todo}, opts, job)
    except MrimsmError as exc:
        return FileOutcome(path, "failed", outputs, str(exc))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a file no check foresaw
        first = str(exc).splitlines()[0] if str(exc) else ""
        return FileOutcome(path, "failed", outputs, f"{type(exc).__name__}: {first}")
    kept = "" if len(todo) == len(names) else f"skipped done: {', '.join(m for m in names if m not in todo)}"
    return FileOutcome(
        path,
        "done",
        outputs,
        "; ".join(x for x in (kept, redone, *rep.notes) if x),
        num_slices=len(rep.volume.slices),
        metrics={r.method: r.metrics for r in rep.results if r.metrics is not None},
        seconds_per_slice={r.method: r.seconds_per_slice for r in rep.results},
        seconds=time.perf_counter() - t0,
    )


def _other_files_note(others: Sequence[Path]) -> str:
    """``3 other files skipped (not .h5 / .hdf5: a.txt, b.nii, ...)``."""
    names = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
    return f"{len(others)} other file{'s' if len(others) != 1 else ''} skipped (not .h5 / .hdf5: {names})"


def format_outcome(outcome: FileOutcome) -> str:
    """One line per file: status, name, and PSNR / SSIM (fastMRI convention) per method
    (printable: a name that is not UTF-8 shows its bytes as ``\\xNN``)."""
    name = outcome.path.name
    if outcome.status == "failed":
        return printable(f"failed  {name}: {outcome.message}")
    if outcome.status in ("skipped", "busy"):
        return printable(f"skipped {name}: {outcome.message}")
    parts = [f"{m} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for m, v in outcome.metrics.items()]
    tail = f"; {outcome.message}" if outcome.message else ""
    return printable(f"done    {name}: {outcome.num_slices} slices in {outcome.seconds:.1f} s" + (
        f"; PSNR / SSIM {', '.join(parts)}" if parts else "") + tail)


def format_directory_summary(report: DirectoryReport) -> str:
    """Counts, failures with their reasons, and the mean metrics per method over the
    files reconstructed on this rank (both conventions, as :func:`~mrimsm.recon.format_table`)."""
    who = f"rank {report.rank} of {report.world_size}: " if report.world_size > 1 else ""
    n = len(report.outcomes)
    busy = report.with_status("busy")
    lines = [
        f"{who}{n} of {report.num_files} files in {report.input_dir}: {len(report.with_status('done'))} done, "
        f"{len(report.with_status('skipped'))} skipped (already done), "
        + (f"{len(busy)} skipped (another run is doing them), " if busy else "")
        + f"{len(report.failed)} failed"
        + (f"; {_other_files_note(report.other_files)}" if report.other_files else "")
    ]
    if busy:
        lines.append(f"  left to another run: {', '.join(o.path.name for o in busy[:5])}"
                     + (", ..." if len(busy) > 5 else "") + "; run the same command again once it ends to check them")
    lines += [f"  failed {o.path.name}: {o.message}" for o in report.failed]
    done = report.with_status("done")
    rows = []
    for m in report.methods:
        mets = [o.metrics[m] for o in done if m in o.metrics]
        secs = [o.seconds_per_slice[m] for o in done if m in o.seconds_per_slice]
        if mets:
            mean = {k: float(np.mean([x[k] for x in mets])) for k in mets[0]}
            rows.append(
                f"{m:<12} {mean['psnr']:7.2f} {mean['ssim']:7.4f} {mean['nmse']:8.4f}   "
                f"{mean['psnr_slice']:7.2f} {mean['ssim_slice']:7.4f} {mean['nmse_slice']:8.4f}   "
                f"{np.mean(secs):8.3f}   {len(mets)}"
            )
    if rows:
        head = (f"{'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   "
                f"{'s/slice':>8}   files")
        lines += ["mean over files with a reference:",
                  f"{'':<12} {'fastMRI (volume, max = ref max)':^25}   {'paper (per slice, [0, 1])':^25}", head,
                  "-" * len(head)] + rows
    return printable("\n".join(lines))
