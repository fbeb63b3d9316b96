"""SIGINT and SIGTERM in the long-running loops (train, recon, prep).

Two ways to stop, both turning SIGTERM into what Ctrl-C does:

* :func:`raising_interrupts` (recon, prep): SIGINT and SIGTERM raise
  KeyboardInterrupt at once; the loop catches it, and, since every output is
  written atomically, reports what finished as :class:`~mrimsm.errors.Interrupted`.
  The loop calls :func:`check_interrupt` between files, in case Python swallowed
  the exception (a signal landing in a weakref callback).
* :func:`deferred_interrupts` (train): the first signal only sets a flag that the
  loop polls after each step, so the step in flight finishes and a checkpoint is
  written; a second SIGINT raises KeyboardInterrupt at once.

Handlers are installed only in the main thread (elsewhere signals cannot be
caught) and only for signals not ignored already (a background job started by a
script ignores SIGINT and keeps doing so); the previous ones are put back on exit.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

__all__ = ["raising_interrupts", "check_interrupt", "deferred_interrupts", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: Signals received inside :func:`raising_interrupts` blocks, by name.
_pending: list[str] = []


def _raise(signum: int, frame) -> None:
    _pending.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_pending[-1])


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if a signal came inside :func:`raising_interrupts` but its
    exception was swallowed (Python drops exceptions raised while a weakref callback or
    ``__del__`` runs, and a signal can land there). Call it between units of work."""
    if _pending:
        raise KeyboardInterrupt(_pending[-1])


@contextlib.contextmanager
def _handlers(handler: Callable) -> Iterator[bool]:
    """Install ``handler`` for :data:`SIGNALS`; yield whether it was installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    # a signal the process was started ignoring (e.g. SIGINT of a background job run by a
    # script) stays ignored
    previous = {s: signal.getsignal(s) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        for s in previous:
            signal.signal(s, handler)
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def raising_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread inside the block
    (and again at :func:`check_interrupt` or the block's end if that one was lost)."""
    _pending.clear()
    previous_hook = sys.unraisablehook

    def hook(unraisable) -> None:  # a swallowed interrupt is re-raised later: don't print it
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        with _handlers(_raise):
            yield
            check_interrupt()
    finally:
        sys.unraisablehook = previous_hook
        _pending.clear()


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
