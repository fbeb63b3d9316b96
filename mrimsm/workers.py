"""Worker processes for the data pipelines (prep's volumes, the simulated raw files).

:func:`process_map` runs a picklable function over a list of jobs in spawned worker
processes that ignore Ctrl-C and use their share of the CPU threads; on Ctrl-C (or any
error) in the parent the workers are stopped at once, not after their current job, and
the exception propagates. The callers write every output atomically, so a stopped job
leaves no partial file.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, TypeVar

from mrimsm.interrupt import check_interrupt
from mrimsm.utils import set_threads

__all__ = ["process_map"]

J = TypeVar("J")
R = TypeVar("R")


def _worker_init(threads: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    set_threads(threads)


def process_map(fn: Callable[[J], R], jobs: Sequence[J], workers: int,
                on_result: Optional[Callable[[J, R], None]] = None) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``workers`` processes when ``workers > 1``.

    Args:
        fn: a module-level (picklable) function.
        jobs: its arguments, one per call (picklable).
        workers: processes; ``<= 1`` (or a single job) runs in this process.
        on_result: ``on_result(job, result)`` in this process as each job finishes
            (completion order), e.g. to count progress or record what finished.

    Returns:
        The results in the order of ``jobs``. Each worker gets ``cpu_count // workers``
        torch threads (at least 1).
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(fn(job))
            if on_result is not None:
                on_result(job, results[-1])
            check_interrupt()
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // int(workers))
    pool = cf.ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn"),
                                  initializer=_worker_init, initargs=(threads,))
    out: list = [None] * len(jobs)
    try:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            out[i] = fut.result()
            if on_result is not None:
                on_result(jobs[i], out[i])
            check_interrupt()
    except BaseException:
        procs = list(getattr(pool, "_processes", {}).values())  # stop them now, not after their job
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        raise
    pool.shutdown()
    return out
