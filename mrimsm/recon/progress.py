"""Progress reporting for the recon pipeline: ``progress(desc, total)`` -> a context
manager with ``update(n)`` (e.g. tqdm), or nothing."""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Optional

Progress = Callable[[str, int], ContextManager[Any]]


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc) -> None:
        return None


def open_bar(progress: Optional[Progress], desc: str, total: int) -> ContextManager[Any]:
    """``progress(desc, total)``, or a bar that shows nothing when ``progress`` is ``None``."""
    return progress(desc, total) if progress is not None else _NullBar()


class StepBar:
    """``on_step(done, total)`` for a method: opens an inner progress bar on first use."""

    def __init__(self, progress: Progress, desc: str):
        self.progress, self.desc = progress, desc
        self.cm: Any = None
        self.bar: Any = None
        self.last = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.cm = self.progress(self.desc, int(total))
            self.bar = self.cm.__enter__()
        self.bar.update(int(done) - self.last)
        self.last = int(done)

    def close(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)
