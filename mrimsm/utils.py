"""Small shared helpers: atomic file writes, the output-path preflight, seeding, file
hashes, the device choice and the CPU thread count."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

from mrimsm.errors import MrimsmError

__all__ = [
    "atomic_path", "same_file", "check_output", "seed_everything", "load_method_object",
    "resolve_device", "set_threads", "file_sha256", "printable", "HDF5_SUFFIXES", "is_hdf5_name",
]

#: The suffixes of HDF5 input files, compared case-insensitively (``scan.h5``, ``scan.H5``,
#: ``scan.hdf5``): what ``recon DIR`` and ``prep-fastmri RAW_DIR`` take from a directory.
HDF5_SUFFIXES = (".h5", ".hdf5")


def is_hdf5_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s name ends in one of :data:`HDF5_SUFFIXES` (any case)."""
    return Path(path).suffix.lower() in HDF5_SUFFIXES


def printable(text: Any) -> str:
    """``str(text)`` as valid UTF-8: characters that stand for bytes which are not UTF-8
    (a POSIX file name decoded by ``os.fsdecode``, ``b'scan_\\xff.h5'`` -> ``'scan_\\udcff.h5'``)
    are shown as ``\\xNN``, so the text can be printed, drawn or stored in an HDF5
    attribute; valid text is returned unchanged."""
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: Write failures that are the destination's fault (full disk, quota, read-only or
#: immutable file): :func:`atomic_path` turns them into one line naming the path.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Whatever is written to the yielded path appears at ``path`` all at once, or
    not at all if the block raises or the process is killed. A full disk, a quota, a
    read-only or immutable destination (:data:`WRITE_ERRNOS`) raise MrimsmError naming
    ``path``, the temporary file removed. Example::

        with atomic_path("out.h5") as tmp:
            with h5py.File(tmp, "w") as f:
                ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the usual permissions (0666 & ~umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise MrimsmError(f"could not write {path}: {os.strerror(exc.errno)}; nothing was written there") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """``a`` and ``b`` name the same file or directory (``False`` when that cannot be told)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):
        return False


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as anything: file, directory, link)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(path.absolute().anchor)  # "." or "/" always exist; a deleted working directory


def check_output(
    path: str | os.PathLike,
    *,
    kind: str = "file",
    inputs: Iterable[str | os.PathLike] = (),
    flag: str = "-o",
    role: str = "input",
) -> Path:
    """The output-path preflight every command runs before any work: ``path`` can be
    written, and writing it harms no input. Nothing is created.

    Checks, each failing with a one-line MrimsmError that names ``flag``:

    * ``kind="file"``: ``path`` is not an existing directory, nor a special file (a
      device such as ``/dev/null``, a fifo, a socket: writing replaces it); ``kind="dir"``:
      ``path`` is not an existing file (an existing directory is fine, a missing one will be
      created); neither is a dangling symbolic link;
    * the closest existing ancestor of what must be created is a directory (not a file,
      e.g. ``README.md/x.h5``) and writable;
    * ``path`` is none of ``inputs`` and, for a directory, none of them is ``path``
      itself (outputs named as inputs would replace them); ``role`` names them in the
      message (``"input"``, ``"checkpoint"``).

    Returns:
        ``Path(path)``.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise MrimsmError(f"{flag} {p} is a directory; give a file name")
    if p.is_symlink() and not p.exists():
        raise MrimsmError(f"{flag} {p} is a dangling symbolic link; give a file name or remove the link")
    if kind == "file" and p.exists() and not p.is_file():
        raise MrimsmError(f"{flag} {p} is not a regular file (a device, fifo or socket); it is never replaced")
    if kind == "dir" and (p.exists() or p.is_symlink()) and not p.is_dir():
        raise MrimsmError(f"{flag} {p} is a file, not a directory")
    anchor = _nearest_existing(p if kind == "dir" else p.parent)
    if not anchor.is_dir():
        raise MrimsmError(f"{flag} {p}: {anchor} is a file, not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise MrimsmError(f"{flag} {p}: the directory {anchor} is not writable")
    for src in inputs:
        if same_file(src, p):
            raise MrimsmError(f"{flag} {p} would overwrite the {role} {src}; choose another {flag}")
    return p


_SHA256: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def flatten_mapping(d: Any, prefix: str = "") -> dict:
    """Nested mappings as one dict with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``);
    a value that is not a mapping is kept under ``prefix``."""
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict = {}
    for k, v in d.items():
        out.update(flatten_mapping(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: Optional[str | torch.device] = None, local_rank: int = 0) -> torch.device:
    """The torch device of every command and library entry point that runs a network.

    The one default: ``None`` is CUDA when a GPU is present, else the CPU.
    ``"cuda"`` is GPU ``local_rank`` modulo the GPU count, so each ``torchrun``
    process takes its own GPU; ``"cuda:N"`` is GPU ``N``; ``"cpu"`` is the CPU.

    Raises:
        MrimsmError: (one line) CUDA asked for without a CUDA GPU, a GPU index that
        does not exist, or any other name.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    text = str(name).strip()
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MrimsmError(f"--device {text} asked for, but no CUDA device is available")
        count = torch.cuda.device_count()
        if text == "cuda":
            return torch.device("cuda", local_rank % count)
        index = text.partition(":")[2]
        if not index.isdigit() or int(index) >= count:
            raise MrimsmError(f"--device {text}: no such GPU ({count} present)")
        return torch.device("cuda", int(index))
    raise MrimsmError(f"--device must be cpu, cuda or cuda:N, got {text!r}")


def set_threads(threads: Optional[int | str]) -> None:
    """Apply ``--threads``: torch's CPU thread count; ``None`` keeps torch's default.
    MrimsmError outside ``[1, mrimsm.limits.MAX_THREADS]``."""
    if threads is None:
        return
    from mrimsm.limits import check_threads

    torch.set_num_threads(check_threads(threads))


def load_method_object(name: str, ref: Any) -> Any:
    """What a method table row names: ``ref`` itself, or for a ``"module:attribute"``
    string that attribute, imported now. MrimsmError naming method ``name`` if the
    import or the lookup fails (a broken method is an error, never skipped)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise MrimsmError(f"method {name!r} is broken: {ref} ({type(exc).__name__}: {exc})") from exc
