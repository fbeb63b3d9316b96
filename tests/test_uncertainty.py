"""Calibration metrics and the split-conformal error bound (:mod:`mrimsm.uncertainty`)."""

from __future__ import annotations

import numpy as np
import pytest

from mrimsm.errors import MrimsmError
from mrimsm.uncertainty import (
    GAUSSIAN_COVERAGE, calibration_metrics, conformal_scale, conformal_table, error_bound, std_floor,
)


def _slices(rng, n, overconfidence=1.0, shape=(32, 32)):
    """``n`` exchangeable slices: a std map and an error drawn with ``overconfidence`` x that std."""
    stds, errors = [], []
    for _ in range(n):
        std = 0.01 + 0.05 * rng.random(shape)
        stds.append(std)
        errors.append(overconfidence * std * rng.standard_normal(shape))
    return errors, stds


def test_metrics_of_a_calibrated_gaussian_map():
    rng = np.random.default_rng(0)
    errors, stds = _slices(rng, 4)
    c = calibration_metrics(np.stack(errors), np.stack(stds))
    for z in (1, 2, 3):
        assert getattr(c, f"coverage_{z}") == pytest.approx(GAUSSIAN_COVERAGE[z], abs=0.01)
    assert c.spearman > 0.3 and c.pearson > 0.3 and c.pixels == 4 * 32 * 32
    assert c.std_over_error == pytest.approx(np.sqrt(np.pi / 2), rel=0.05)  # E|N(0, s)| = s sqrt(2 / pi)


def test_an_uninformative_overconfident_map_reads_as_such():
    rng = np.random.default_rng(1)
    error = 0.05 * rng.standard_normal((64, 64))
    std = 0.01 + 0.01 * rng.random((64, 64))  # unrelated to the error, 3x too small
    c = calibration_metrics(error, std)
    assert abs(c.spearman) < 0.05 and c.coverage_2 < 0.6


def test_support_selects_the_pixels():
    error = np.zeros((4, 4))
    error[:2] = 10.0
    std = np.ones((4, 4))
    support = np.zeros((4, 4), bool)
    support[2:] = True
    assert calibration_metrics(error, std, support).coverage_1 == 1.0
    assert calibration_metrics(error, std).coverage_1 == 0.5


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("overconfidence", [0.5, 3.0])
def test_conformal_bound_covers_exchangeable_test_pixels(coverage, overconfidence):
    """Calibrated on 8 slices, tested on 8 others drawn alike: the bound covers at least
    the nominal share minus 1 % (and not much more), whatever the map's own scale."""
    rng = np.random.default_rng(2)
    cal_e, cal_s = _slices(rng, 8, overconfidence)
    test_e, test_s = _slices(rng, 8, overconfidence)
    cal = conformal_scale(cal_e, cal_s, coverage)
    observed = np.mean([np.mean(np.abs(e) <= error_bound(s, cal)) for e, s in zip(test_e, test_s)])
    assert coverage - 0.01 <= observed <= coverage + 0.02
    # the uncalibrated Gaussian interval misses the nominal share by far for these maps
    z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.96}[coverage]
    naive = np.mean([np.mean(np.abs(e) <= z * s) for e, s in zip(test_e, test_s)])
    assert abs(naive - coverage) > 0.04


def test_conformal_scale_is_the_finite_sample_quantile():
    errors = [np.arange(1, 10, dtype=float).reshape(3, 3)]
    stds = [np.ones((3, 3))]
    cal = conformal_scale(errors, stds, 0.8, eps=0.0)  # ceil(10 * 0.8) = 8th of 9 scores
    assert cal["scale"] == 8.0 and cal["pixels"] == 9
    assert conformal_scale(errors, stds, 0.95, eps=0.0)["scale"] == float("inf")  # ceil(9.5) = 10 > 9


def test_bad_input():
    with pytest.raises(MrimsmError, match="coverage"):
        conformal_scale([np.ones((2, 2))], [np.ones((2, 2))], 1.0)
    with pytest.raises(MrimsmError, match="shape"):
        calibration_metrics(np.ones((2, 2)), np.ones((3, 3)))
    with pytest.raises(MrimsmError, match="support"):
        calibration_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(MrimsmError, match="finite"):
        error_bound(np.ones((2, 2)), {"scale": float("nan"), "floor": 0.0})


def test_table_matches_single_levels_and_grows():
    """The stored table holds the same scale as conformal_scale at each level, and the
    scale grows with the level."""
    rng = np.random.default_rng(5)
    e, s = _slices(rng, 4, 1.0)
    table = conformal_table(e, s)
    assert list(table)[0] == "0.50" and list(table)[-1] == "0.99" and len(table) == 50
    for level in (0.5, 0.8, 0.9, 0.99):
        assert table[f"{level:.2f}"] == conformal_scale(e, s, level)["scale"]
    values = list(table.values())
    assert all(a <= b for a, b in zip(values, values[1:])) and values[0] < values[-1]


def test_per_slice_floor_is_scale_free_and_used_by_the_bound():
    """The floor follows each slice's own std level, so a slice scaled by 10 gets a bound
    scaled by 10 (a fixed eps would not), and zero-spread pixels get a positive bound."""
    std = np.ones((2, 4, 4))
    std[1] *= 10.0
    std[:, 0, 0] = 0.0
    assert std_floor(std[0]) == pytest.approx(0.01) and std_floor(np.zeros((3, 3))) == 0.0
    bound = error_bound(std, {"scale": 2.0, "floor": "slice"})
    assert bound.shape == std.shape and bound.dtype == np.float32
    np.testing.assert_allclose(bound[1], 10.0 * bound[0], rtol=1e-6)
    assert bound[0, 0, 0] == pytest.approx(0.02) and bound[0, 1, 1] == pytest.approx(2.02)
