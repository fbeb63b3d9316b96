"""Progress bars and log lines of the benchmark scripts: one tqdm helper for all."""

from __future__ import annotations

import sys
from typing import Any, Callable, ContextManager, Optional

#: ``progress(desc, total)`` -> a context manager with ``update(n)``: what
#: :mod:`mrimsm.recon` takes (``mrimsm.recon.progress.Progress``).
Progress = Callable[[str, int], ContextManager[Any]]


def bars(quiet: bool) -> Optional[Progress]:
    """``progress(desc, total)`` -> a tqdm bar on stderr that disappears when done, or
    ``None`` (no bars) when ``quiet``; the form :mod:`mrimsm.recon` takes."""
    if quiet:
        return None

    def make(desc: str, total: int) -> ContextManager[Any]:
        from tqdm import tqdm

        return tqdm(desc=f"{desc:<12}", total=total, leave=False, file=sys.stderr)

    return make


def log_line(text: str) -> None:
    """Print ``text`` on stderr without breaking an open progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
