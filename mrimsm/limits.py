"""The bounds every command applies to the values it is given: thread counts, seeds,
finite floats, solver iteration counts, and the memory and disk a job will need.

Each check raises a one-line :class:`~mrimsm.errors.MrimsmError` naming the flag (or the
config key), so every command refuses the same values with the same words.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from mrimsm.errors import MrimsmError

__all__ = [
    "MAX_THREADS", "SEED_LIMIT", "MAX_MASKS_PER_STEP", "MAX_ITERATIONS", "MEMORY_SHARE",
    "is_acceleration", "parse_accel", "check_threads", "check_seed", "check_finite", "gib", "check_memory", "check_disk",
]

#: Most CPU threads a command takes: OpenMP crashes (libgomp) long before 100,000.
MAX_THREADS: int = max(256, os.cpu_count() or 1)
#: Seeds are in ``[0, 2**32)``: NumPy's legacy seeding, ``numpy.random.default_rng``,
#: ``torch.manual_seed`` and an HDF5 integer attribute all take them, also after the
#: small offsets commands add per image or per slice.
SEED_LIMIT: int = 2**32
#: Most random masks per reverse step (``--w``): each costs one network evaluation.
MAX_MASKS_PER_STEP: int = 1000
#: Most iterations of an inner solver (``--cs-iters``, ``--dc-iters``, ``--sense-iters``).
MAX_ITERATIONS: int = 100_000
#: Share of the free memory a job may plan to use (a recon batch, a restoration); the
#: rest is left to the process and the OS.
MEMORY_SHARE: float = 0.8


def is_acceleration(value: float) -> bool:
    """Whether ``value`` is an acceleration factor R: a finite number >= 1. The one rule
    behind :func:`parse_accel` (the flag), the mask families' check and the configs'."""
    return math.isfinite(value) and value >= 1


def parse_accel(value: Any) -> float:
    """``"6"`` -> 6.0; MrimsmError unless a finite number >= 1 (``recon --accel``,
    ``prep-fastmri --accel``; whether a mask can reach it is the mask family's check)."""
    try:
        accel = float(value)
    except (TypeError, ValueError):
        raise MrimsmError(f"--accel must be a number >= 1, got {value!r}") from None
    if not is_acceleration(accel):
        raise MrimsmError(f"--accel must be a number >= 1, got {value!r}")
    return accel


def check_threads(threads: Any, flag: str = "--threads") -> int:
    """``threads`` as an int in ``[1, MAX_THREADS]``; MrimsmError naming ``flag`` otherwise."""
    try:
        n = int(str(threads).strip())
    except (TypeError, ValueError):
        raise MrimsmError(f"{flag} must be an integer in [1, {MAX_THREADS}], got {threads!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise MrimsmError(f"{flag} must be an integer in [1, {MAX_THREADS}], got {threads}")
    return n


def check_seed(seed: Any, flag: str = "--seed") -> int:
    """``seed`` as an int in ``[0, SEED_LIMIT)``; MrimsmError naming ``flag`` otherwise."""
    what = f"{flag} must be an integer in [0, {SEED_LIMIT - 1}]"
    if isinstance(seed, bool):
        raise MrimsmError(f"{what}, got {seed!r}")
    try:
        n = int(str(seed).strip()) if not isinstance(seed, int) else seed
    except (TypeError, ValueError):
        raise MrimsmError(f"{what}, got {seed!r}") from None
    if not 0 <= n < SEED_LIMIT:
        raise MrimsmError(f"{what}, got {seed}")
    return n


def check_finite(value: Any, flag: str) -> float:
    """``value`` as a finite float (NaN and infinities refused); MrimsmError naming ``flag``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MrimsmError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MrimsmError(f"{flag} must be a finite number, got {value!r}")
    return number


def gib(nbytes: float) -> str:
    """``nbytes`` as GiB text, e.g. ``"56.2 GiB"``."""
    return f"{nbytes / 2**30:,.1f} GiB"


def available_bytes(device: Any = "cpu") -> Optional[int]:
    """Memory free for a new allocation: CUDA's free memory on a GPU, Linux's
    ``MemAvailable`` on the CPU; ``None`` when it cannot be told."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, hint: str = "", device: Any = "cpu") -> None:
    """MrimsmError when ``need`` bytes are more than ``device`` has free (nothing is
    checked when that cannot be told). ``what`` says what needs them; ``hint`` how to need less."""
    free = available_bytes(device)
    if free is not None and need > free:
        tail = f"; {hint}" if hint else ""
        raise MrimsmError(f"{what} needs about {gib(need)} of memory, more than the {gib(free)} available{tail}")


def check_disk(need: int, path: str | os.PathLike, what: str, hint: str = "") -> None:
    """MrimsmError when ``need`` bytes are more than the file system of ``path`` (or of
    its closest existing ancestor) has free."""
    p = Path(path).absolute()
    for anchor in (p, *p.parents):
        if anchor.exists():
            break
    try:
        free = shutil.disk_usage(anchor).free
    except OSError:
        return
    if need > free:
        tail = f"; {hint}" if hint else ""
        raise MrimsmError(f"{what} needs about {gib(need)} of disk, more than the {gib(free)} free under {anchor}{tail}")
