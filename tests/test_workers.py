"""mrimsm.workers.process_map: the worker pool of prep and of the simulated raw files."""

from __future__ import annotations

import math

import pytest

from mrimsm.workers import process_map


@pytest.mark.parametrize("workers", [1, 2])
def test_results_keep_the_job_order_and_each_is_reported(workers):
    seen = []
    out = process_map(math.factorial, [5, 3, 4, 6], workers, on_result=lambda j, r: seen.append((j, r)))
    assert out == [120, 6, 24, 720]
    assert sorted(seen) == [(3, 6), (4, 24), (5, 120), (6, 720)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_stops_the_map_with_its_error(workers):
    with pytest.raises(ValueError):
        process_map(math.factorial, [3, -1, 4], workers)
