"""The argument parser base of the benchmark scripts and the options they share.

:func:`base_parser` adds the options most scripts take (``--out``, ``--threads``,
``--device``, ``--seed``, ``--quiet``), each only when the script asks for it and with the
script's own default; a script then adds only its own options.
:func:`add_heldout_arguments` adds the evaluation options of the held-out pipeline
(``csmri``, ``recon``, ``sweep_solver``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

#: ``base_parser(..., device=AUTO)``: CUDA when torch sees a GPU, else the CPU.
AUTO = "auto"


class _Absent:
    """The default of :func:`base_parser`'s options: the script does not take it."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def base_parser(
    doc: str,
    *,
    out: Any = ABSENT,
    threads: Any = ABSENT,
    device: Any = ABSENT,
    seed: Any = ABSENT,
    quiet: bool | str = False,
    threads_help: Optional[str] = None,
) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose help shows ``doc`` (the script's docstring) as written,
    with the shared options the script takes.

    Args:
        doc: the description (the module docstring).
        out: default of ``--out`` (the results directory), or ``ABSENT``.
        threads: default of ``--threads`` (torch CPU threads; ``None``: see ``threads_help``),
            or ``ABSENT``.
        device: default of ``--device`` (``AUTO``: ``cuda`` when available, else ``cpu``),
            or ``ABSENT``.
        seed: default of ``--seed``, or ``ABSENT``.
        quiet: add ``--quiet`` (``True``: help "no progress bars"; a string: its help).
        threads_help: ``--threads``' help (default: "torch CPU threads (default N)").
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not ABSENT:
        ap.add_argument("--out", type=Path, default=out, help="results directory (default %(default)s)")
    if threads is not ABSENT:
        ap.add_argument("--threads", type=int, default=threads,
                        help=threads_help or "torch CPU threads (default %(default)s)")
    if device is not ABSENT:
        if device == AUTO:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        ap.add_argument("--device", default=device, help="torch device (default %(default)s)")
    if seed is not ABSENT:
        ap.add_argument("--seed", type=int, default=seed, help="base seed of masks and sampling (default %(default)s)")
    if quiet:
        ap.add_argument("--quiet", action="store_true", help=quiet if isinstance(quiet, str) else "no progress bars")
    return ap


def add_heldout_arguments(ap: argparse.ArgumentParser, data: bool = True) -> None:
    """The evaluation options of the held-out pipeline: accelerations, slices (simulated or,
    with ``data``, a prepared directory's), the MSM model and its solver settings."""
    from benchmarks.data import HELDOUT_COILS, HELDOUT_NOISE, HELDOUT_SIZE

    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 6.0], help="accelerations (default 4 6)")
    ap.add_argument("--slices", type=int, default=3, help="evaluation slices (default 3: one per orientation)")
    if data:
        ap.add_argument("--data", type=Path, default=None,
                        help="prepared directory (mrimsm prep-fastmri) whose val shards are used instead of the "
                        "simulated held-out slices")
    ap.add_argument("--checkpoint", type=Path, default=None, help="MSM checkpoint (default: the shipped model)")
    ap.add_argument("--settings", type=Path, default=None,
                    help="posterior settings YAML (default: the prior's own, or PosteriorSettings' defaults)")
    ap.add_argument("--steps", type=int, default=None, help="MSM reverse steps (default: the settings')")
    ap.add_argument("--w", type=int, default=None, help="MSM masks per step (default: the settings')")
    ap.add_argument("--size", type=int, default=HELDOUT_SIZE, help="simulated slice size (the model's size)")
    ap.add_argument("--coils", type=int, default=HELDOUT_COILS, help="simulated coils")
    ap.add_argument("--noise", type=float, default=HELDOUT_NOISE, help="simulated k-space noise std")


#: ``--threads``' help in the scripts whose default is one thread on the CPU (:func:`setup_torch`).
ONE_THREAD_ON_CPU = "torch CPU threads (default 1 on CPU: fastest on a shared machine)"


def setup_torch(args: argparse.Namespace, cpu_default: Optional[int] = 1) -> None:
    """Set torch's CPU threads to ``args.threads``; when that is ``None``, to ``cpu_default``
    on the CPU (``None``: torch's own default) and leave them on another device."""
    import torch

    threads = args.threads
    if threads is None and getattr(args, "device", "cpu") == "cpu":
        threads = cpu_default
    if threads:
        torch.set_num_threads(threads)


def parse_value(text: str) -> Any:
    """A command-line setting value: ``"50"`` -> 50, ``"0.3"`` -> 0.3, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def run_main(body: Callable[[], int]) -> None:
    """Run ``body`` and exit with its code; an MrimsmError is one line ``error: ...`` and
    exit code 2."""
    from mrimsm.errors import MrimsmError

    try:
        code = body()
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
