"""VPSchedule: noise levels in measurement units, respacing, t_for_sigma."""

import numpy as np
import pytest
import torch

from mrimsm.diffusion.schedule import VPSchedule


def _reference_sigmas(n=1000, b0=1e-4, b1=0.02):
    # independent float64 numpy computation of sigma_t = sqrt((1 - abar) / abar)
    abar = np.cumprod(1.0 - np.linspace(b0, b1, n))
    return np.sqrt((1.0 - abar) / abar), abar


def test_sigma_and_alpha_bar_match_the_definition():
    sch = VPSchedule()
    ref_sigma, ref_abar = _reference_sigmas()
    t = torch.arange(1000)
    np.testing.assert_allclose(sch.sigma(t).numpy(), ref_sigma, rtol=1e-12)
    np.testing.assert_allclose(sch.alpha_bar(t).numpy(), ref_abar, rtol=1e-12)
    assert sch.sigma(t).dtype == torch.float64
    # clean virtual step -1
    assert float(sch.sigma(-1)) == 0.0 and float(sch.alpha_bar(-1)) == 1.0
    # monotone: more noise at larger t
    assert bool((sch.sigmas[1:] > sch.sigmas[:-1]).all())
    # the numbers docs/method.md quotes: sigma_0 ~ 0.01, rho = 0.1 near step 26
    assert abs(float(sch.sigma(0)) - 0.01) < 1e-4


def test_lookup_keeps_shape_and_rejects_bad_steps():
    sch = VPSchedule()
    t = torch.tensor([[0, 5], [999, -1]])
    assert sch.sigma(t).shape == (2, 2)
    with pytest.raises(IndexError):
        sch.sigma(1000)
    with pytest.raises(IndexError):
        sch.alpha_bar(torch.tensor([-2]))
    with pytest.raises(TypeError):
        sch.sigma(torch.tensor([1.5]))


def test_respaced_200_is_every_fifth_step_with_both_ends():
    sch = VPSchedule()
    ts = sch.respaced(200)
    assert ts.dtype == torch.int64 and ts.shape == (200,)
    assert int(ts[0]) == 0 and int(ts[-1]) == 999
    gaps = torch.diff(ts)
    assert set(gaps.tolist()) <= {5, 6}
    assert torch.equal(sch.respaced(1000), torch.arange(1000))
    assert sch.respaced(1).tolist() == [999]
    with pytest.raises(ValueError):
        sch.respaced(0)
    with pytest.raises(ValueError):
        sch.respaced(1001)


def test_t_for_sigma_is_closest_from_below():
    sch = VPSchedule()
    t = sch.t_for_sigma(0.1)
    assert t == 26  # docs/method.md: "rho = 0.1 corresponds to a step near 26"
    assert float(sch.sigma(t)) <= 0.1 < float(sch.sigma(t + 1))
    ts = sch.respaced(200)
    t200 = sch.t_for_sigma(0.1, ts)
    assert t200 == 25 and t200 in ts.tolist()
    # about 6 of the 200 training steps have sigma_t <= rho = 0.1 (docs/method.md)
    assert int((sch.sigma(ts) <= 0.1).sum()) == 6
    # below the smallest level: the smallest candidate
    assert sch.t_for_sigma(1e-6, ts) == 0
    assert sch.t_for_sigma(1e9) == 999


def test_other_schedules_validate():
    with pytest.raises(ValueError):
        VPSchedule(num_steps=0)
    with pytest.raises(ValueError):
        VPSchedule(beta_start=0.03, beta_end=0.02)
    small = VPSchedule(num_steps=10)
    assert small.respaced(10).tolist() == list(range(10))
