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

* :func:`until_exit` (the command line's entry point, around the whole command):
  a signal outside those blocks raises KeyboardInterrupt once (the CLI prints
  ``interrupted`` and exits with 130), and once any signal has asked the process to
  stop, further ones are ignored until it exits. Without it, a second SIGTERM that
  came after a block had put the default handler back killed the process with 143
  just after it printed how to resume.

Handlers are installed only in the main thread (elsewhere signals cannot be
caught) and only for signals not ignored already (a background job started by a
script ignores SIGINT and keeps doing so); the previous ones are put back on exit
(by :func:`until_exit` too, unless a signal asked the process to stop: it then
leaves them ignored, for the process is about to exit with 130).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

__all__ = ["raising_interrupts", "check_interrupt", "deferred_interrupts", "until_exit", "stopping", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: Signals received inside :func:`raising_interrupts` blocks, by name.
_pending: list[str] = []


class _Process:
    """The state :func:`until_exit` keeps for the whole process."""

    guarded = False  # inside until_exit
    stopping = ""  # the name of the first signal that asked the process to stop ("" before one)


def stopping() -> str:
    """The name of the signal that asked this process to stop (``""`` when none did, or
    outside :func:`until_exit`)."""
    return _Process.stopping if _Process.guarded else ""


def _note_stop(signum: int) -> bool:
    """Record that signal ``signum`` asks the process to stop; whether it is the first
    to (outside :func:`until_exit` every signal is)."""
    if not _Process.guarded:
        return True
    first = not _Process.stopping
    _Process.stopping = _Process.stopping or signal.Signals(signum).name
    return first


def _raise(signum: int, frame) -> None:
    first_here = not _pending
    _pending.append(signal.Signals(signum).name)
    # only the first signal raises: a second KeyboardInterrupt would land in the code
    # that handles the first (reporting what finished); check_interrupt re-raises a
    # first one that Python swallowed
    if _note_stop(signum) and first_here:
        raise KeyboardInterrupt(_pending[-1])


def _outer(signum: int, frame) -> None:
    """:func:`until_exit`'s handler, outside the blocks: raise once, then ignore."""
    if _note_stop(signum):
        raise KeyboardInterrupt(signal.Signals(signum).name)


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
        self.raised = False

    def __bool__(self) -> bool:
        return bool(self.name)

    def handler(self, signum: int, frame) -> None:
        _note_stop(signum)
        if self.name and signum == signal.SIGINT and not self.raised:
            self.raised = True  # a second Ctrl-C stops at once; later signals are ignored
            raise KeyboardInterrupt("second SIGINT")
        self.name = self.name or signal.Signals(signum).name


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[_Flag]:
    """Inside the block the first SIGINT / SIGTERM only sets the yielded flag (poll it
    between units of work); a second SIGINT raises KeyboardInterrupt (once: any later
    signal is ignored), a repeated SIGTERM changes nothing."""
    flag = _Flag()
    with _handlers(flag.handler):
        yield flag


@contextlib.contextmanager
def until_exit() -> Iterator[None]:
    """Around a whole command (the CLI's entry point): SIGINT and SIGTERM outside the
    blocks above raise KeyboardInterrupt once; after any signal asked to stop (here or
    inside a block) every further one is ignored, also after the block, so that the
    exit code stays 130 however many signals follow (a supervisor repeating SIGTERM).
    On the way out the previous handlers come back, unless a signal asked to stop: the
    signals then stay ignored while the process exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    outer = (_Process.guarded, _Process.stopping)
    _Process.guarded, _Process.stopping = True, ""
    try:
        for s in previous:
            signal.signal(s, _outer)
        yield
    finally:
        stopped = bool(_Process.stopping)
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if stopped else (h if h is not None else signal.SIG_DFL))
        _Process.guarded, _Process.stopping = outer
