"""SIGINT and SIGTERM in the long-running loops (train, recon, prep).

Two ways to stop, both turning SIGTERM into what Ctrl-C does:

* :func:`raising_interrupts` (recon, prep): SIGINT and SIGTERM raise
  KeyboardInterrupt at once; the loop catches it, and, since every output is
  written atomically, reports what finished as :class:`~mrimsm.errors.Interrupted`.
* :func:`deferred_interrupts` (train): the first signal only sets a flag that the
  loop polls after each step, so the step in flight finishes and a checkpoint is
  written; a second SIGINT raises KeyboardInterrupt at once.

Handlers are installed only in the main thread (elsewhere signals cannot be
caught) and the previous ones are put back on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

__all__ = ["raising_interrupts", "deferred_interrupts", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _handlers(handler: Callable) -> Iterator[bool]:
    """Install ``handler`` for :data:`SIGNALS`; yield whether it was installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        for s in SIGNALS:
            signal.signal(s, handler)
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def raising_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread inside the block."""
    with _handlers(_raise):
        yield


class _Flag:
    """What :func:`deferred_interrupts` yields: ``bool(flag)`` is true once a signal came;
    ``flag.name`` is its name (``"SIGINT"``, ``"SIGTERM"``)."""

    def __init__(self) -> None:
        self.name = ""

    def __bool__(self) -> bool:
        return bool(self.name)

    def handler(self, signum: int, frame) -> None:
        if self.name and signum == signal.SIGINT:
            raise KeyboardInterrupt("second SIGINT")  # a second Ctrl-C stops at once
        self.name = self.name or signal.Signals(signum).name


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[_Flag]:
    """Inside the block the first SIGINT / SIGTERM only sets the yielded flag (poll it
    between units of work); a second SIGINT raises KeyboardInterrupt."""
    flag = _Flag()
    with _handlers(flag.handler):
        yield flag
