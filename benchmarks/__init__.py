"""mrimsm's speed and quality benchmarks, run from the repository root as
``python -m benchmarks.NAME`` (``--help`` on each).

The scripts share these modules:

* :mod:`benchmarks.data` — evaluation volumes: the simulated held-out slices, prepared
  validation shards, noise-free references, the data scripts of ``data_scripts/``;
* :mod:`benchmarks.runs` — running registered reconstruction methods over volumes into
  records (:class:`~benchmarks.runs.Run`, :class:`~benchmarks.runs.Record`);
* :mod:`benchmarks.tables` — aggregating records into rows, markdown and csv files;
* :mod:`benchmarks.figures` — matplotlib figures;
* :mod:`benchmarks.arguments` — the argument parser base and the shared options;
* :mod:`benchmarks.progress` — progress bars and log lines;
* :mod:`benchmarks.runner` — the held-out pipeline of ``csmri`` and ``recon``
  (volumes x methods -> records -> csv / md / png).

``benchmarks.readme`` writes ``benchmarks/README.md`` from ``benchmarks/results/``.
Importing this package loads nothing heavy (no torch), so ``python -m benchmarks.readme``
runs without the package's dependencies.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (benchmarks/ is a folder of the source checkout, not installed).
REPO = Path(__file__).resolve().parents[1]
#: The default output folder of the benchmark scripts (untracked).
RESULTS_DIR = REPO / "results"
