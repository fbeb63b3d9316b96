"""The held-out pipeline that ``csmri`` and ``recon`` are front ends of: volumes x methods
-> records -> ``<stem>.csv`` / ``<stem>_slices.csv`` / ``<stem>.md`` (and ``<stem>.png``).

A front end plans its runs (:class:`benchmarks.runs.Run`) and renders the markdown from
the :class:`Outcome` (with :func:`report_head` and :func:`accel_tables`); :func:`run_heldout`
does the rest: builds every method first (a bad
checkpoint or option fails before any work), loads the volumes of ``args``
(:func:`benchmarks.data.load_volumes`: the simulated held-out slices or a prepared
directory's validation shards), runs every method on them, summarizes and writes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from benchmarks.data import load_volumes
from benchmarks.figures import comparison_figure
from benchmarks.progress import bars, log_line
from benchmarks.runs import Record, Run, build_methods, estimate_nfe, evaluate
from benchmarks.tables import METRIC_HEADER, conventions_note, cost_cells, find, header_lines, md_table, metric_cells, \
    slice_rows, summarize, write_results, write_text


@dataclass(frozen=True)
class Outcome:
    """What a front end renders: the summary rows (:func:`benchmarks.tables.summarize`),
    the records, the sentence describing the data, the figure written (or ``None``) and
    the wall time so far in seconds."""

    rows: list[dict]
    records: list[Record]
    data_text: str
    figure: Optional[Path]
    seconds: float


def _never(run: Run, k: int) -> bool:
    return False


def _first(run: Run, k: int) -> bool:
    return k == 0


def run_heldout(
    args: argparse.Namespace,
    runs: Sequence[Run],
    common: Mapping[str, Any],
    settings: Any,
    render: Callable[[Outcome], str],
    *,
    stem: str,
    unit: str = "methods",
    figure: bool = False,
    uncertainty_label: Optional[str] = None,
    readme: Optional[Callable[[Outcome], str]] = None,
) -> int:
    """Run ``runs`` on the volumes of ``args`` and write ``args.out / <stem>.*``.

    Args:
        args: the parsed options of :func:`benchmarks.arguments.add_heldout_arguments` and
            ``--out``, ``--seed``, ``--device``, ``--quiet``.
        common: options every run gets (checkpoints, settings file, device, seed).
        settings: the MSM posterior settings (``steps``, ``w``, ``samples``: the network
            evaluations announced before the work).
        render: the markdown text from the outcome.
        stem: the output files' name.
        unit: what the first log line counts (``"methods"`` or ``"runs"``).
        figure: also write ``<stem>.png`` (:func:`benchmarks.figures.comparison_figure` of
            the first volume, with ``uncertainty_label``'s uncertainty map).
        readme: also write ``<stem>_readme.csv``, the result file for
            ``benchmarks/results/`` that ``readme(outcome)`` returns.
    """
    t0 = time.perf_counter()
    built = build_methods(runs, common)  # checkpoints and options fail here, before any work
    progress = bars(args.quiet)
    with tempfile.TemporaryDirectory(prefix="mrimsm-bench-") as work:
        vols, data_text = load_volumes(args, Path(work), progress)
        nfe = estimate_nfe(runs, {a: sum(len(v.slices) for v in vs) for a, vs in vols.items()},
                           settings.steps, settings.w, settings.samples)
        log_line(f"{len(runs)} {unit} x {len(vols)} accelerations; MSM network evaluations in total: {nfe}")
        records = evaluate(vols, runs, built, common, progress, log_line, keep=_first if figure else _never)
        png = None
        if figure:
            args.out.mkdir(parents=True, exist_ok=True)
            png = comparison_figure(args.out / f"{stem}.png", vols, records, [r.label for r in runs],
                                    uncertainty_label=uncertainty_label)
    rows = summarize(records, runs)
    outcome = Outcome(rows, records, data_text, png, time.perf_counter() - t0)
    readme_csv = None if readme is None else write_text(args.out / f"{stem}_readme.csv", readme(outcome))
    write_results(args.out, stem, render(outcome), rows, slice_rows(records), extra=[png, readme_csv])
    return 0


def report_head(args: argparse.Namespace, title: str, outcome: Outcome, model_lines: Sequence[str]) -> list[str]:
    """The markdown lines above the tables: title, command, machine, data, models, conventions."""
    lines = header_lines(title, sys.argv, args.device)
    lines += [f"Data: {outcome.data_text}", ""] + [m + "." for m in model_lines] + ["", conventions_note(
        "here a volume is one orientation's slices" if args.data is None else "one per source volume"), ""]
    return lines


def accel_tables(rows: Sequence[dict], labels: Sequence[str], verdict: Callable[[Sequence[dict], float], str]) -> list[str]:
    """Per acceleration a table of the ``labels`` rows (both conventions, cost) and the
    line ``verdict(rows, accel)`` below it (none when it is empty)."""
    lines: list[str] = []
    for accel in dict.fromkeys(r["accel"] for r in rows):
        here = [r for r in (find(rows, accel, lab) for lab in labels) if r is not None]
        if not here:
            continue
        lines += [f"## R = {accel:g} (achieved {here[0]['achieved_accel']:.2f}, {here[0]['slices']} slices)", ""]
        lines.append(md_table(["method", *METRIC_HEADER, "s/slice", "NFE/slice"],
                              [[r["label"], *metric_cells(r), *cost_cells(r)] for r in here]))
        line = verdict(rows, accel)
        lines += ["", line, ""] if line else [""]
    return lines
