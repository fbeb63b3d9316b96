"""Mask families: seeding, achieved acceleration, SSDU split, MSM sub-mask sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrimsm.physics.masks import (
    BernoulliPixel,
    BoxPattern,
    EquispacedCartesian,
    PaperCartesian,
    RandomCartesian,
    SubmaskSampler,
    SuperResolutionPattern,
    achieved_acceleration,
    cartesian_family,
    column_mask_tensor,
    seed_for,
    ssdu_split,
)


@pytest.mark.parametrize("family_cls", [RandomCartesian, EquispacedCartesian])
@pytest.mark.parametrize("accel,cf", [(4, 0.08), (8, 0.04), (6, 0.06), (3, 0.1)])
@pytest.mark.parametrize("w", [256, 320, 368, 64])
def test_fastmri_cartesian_accel_within_5_percent(family_cls, accel, cf, w):
    fam = family_cls(accel=accel, center_fraction=cf)
    for seed in range(5):
        m = fam((w, w), seed)
        assert m.shape == (w,) and m.dtype == bool
        assert abs(achieved_acceleration(m) - accel) / accel <= 0.05
        num_low = round(w * cf)
        start = (w - num_low + 1) // 2
        assert m[start : start + num_low].all()


def test_masks_are_seeded():
    for fam in [RandomCartesian(4), EquispacedCartesian(6), PaperCartesian(4), BernoulliPixel(0.4)]:
        a, b, c = fam((32, 64), 7), fam((32, 64), 7), fam((32, 64), 8)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_seed_for_is_stable_and_distinct():
    assert seed_for("file.h5", 3, 0) == seed_for("file.h5", 3, 0)
    assert seed_for("file.h5", 3, 0) != seed_for("file.h5", 4, 0)
    assert seed_for("file.h5", 3, 0) != seed_for("file.h5", 3, 1)


def test_paper_mask_achieves_about_3_2_at_r4():
    fam = PaperCartesian(accel=4, center_lines=20)
    accs = [achieved_acceleration(fam((256, 256), s)) for s in range(200)]
    # expected kept columns: 20 + 236 / 4 = 79 -> 256 / 79 = 3.24
    assert 3.1 < np.mean(accs) < 3.4
    m = fam((256, 256), 0)
    assert m[118:138].all()


def test_probability_matches_empirical_frequency():
    for fam in [RandomCartesian(4, 0.08), PaperCartesian(4, 8)]:
        p = fam.probability((64, 64))
        emp = np.mean([fam((64, 64), s) for s in range(3000)], axis=0)
        assert np.abs(p - emp).max() < 0.04


def test_too_much_acceleration_is_refused():
    with pytest.raises(ValueError, match="center"):
        RandomCartesian(accel=40, center_fraction=0.08)((64, 64), 0)
    with pytest.raises(ValueError):
        RandomCartesian(accel=0.5)
    with pytest.raises(ValueError):
        cartesian_family("spiral", 4)


def test_pixel_box_sr_patterns():
    m = BernoulliPixel(0.4)((128, 128), 0)
    assert m.shape == (128, 128) and abs(m.mean() - 0.4) < 0.02
    b = BoxPattern(0.5)((16, 16))
    assert b.sum() == 256 - 64 and not b[8, 8]
    s = SuperResolutionPattern(4)((16, 16))
    assert s.sum() == 16 and s[0, 0] and not s[1, 1]


@pytest.mark.parametrize("method", ["gaussian", "uniform"])
@pytest.mark.parametrize("two_d", [False, True])
def test_ssdu_split_disjoint_cover_center(method, two_d):
    if two_d:
        mask = BernoulliPixel(0.3)((32, 32), 1)
        mask[14:18, 14:18] = True
    else:
        mask = RandomCartesian(4, 0.08)((64, 64), 1)
    theta, lam = ssdu_split(mask, 0.4, method=method, center_size=4, seed=3)
    assert np.array_equal(theta | lam, mask)
    assert not (theta & lam).any()
    assert abs(lam.sum() - 0.4 * mask.sum()) <= 1
    center = (slice(14, 18),) * mask.ndim if two_d else (slice(30, 34),)
    assert theta[center].all()
    t2, l2 = ssdu_split(mask, 0.4, method=method, center_size=4, seed=3)
    assert np.array_equal(t2, theta)


def test_submask_sampler_coverage_and_weights():
    fam = PaperCartesian(accel=4, center_lines=4)
    support = np.zeros(32, dtype=bool)
    support[4:28] = True
    sampler = SubmaskSampler(fam, (32, 32), support=support)
    masks = sampler.draw(3, np.random.default_rng(0))
    assert masks.shape == (3, 1, 1, 32)
    assert masks[..., :4].sum() == 0  # outside the support
    cov = sampler.coverage(masks)
    assert cov.shape == (1, 1, 1, 32)
    assert torch.equal(cov, masks.sum(0, keepdim=True))
    wts = sampler.weights(cov)
    assert torch.all(wts <= 1) and torch.allclose(wts * torch.clamp(cov, min=1), torch.ones_like(cov))
    exp = sampler.expected_coverage(3)
    assert torch.allclose(exp[..., 14:18], torch.full((4,), 3.0))
    assert torch.allclose(exp[..., 4:8], torch.full((4,), 0.75))
    # reproducible
    again = sampler.draw(3, np.random.default_rng(0))
    assert torch.equal(masks, again)


def test_column_mask_tensor_shape():
    t = column_mask_tensor(np.ones((2, 8), dtype=bool))
    assert t.shape == (2, 1, 1, 8) and t.dtype == torch.float32


def test_the_shared_rules_of_masks_and_seeds():
    from mrimsm.limits import is_acceleration
    from mrimsm.physics.masks import fastmri_center_fraction, hash_seed, seed_for

    assert [fastmri_center_fraction(a) for a in (2, 4, 6, 8, 12)] == pytest.approx([0.08, 0.08, 0.06, 0.04, 0.04])
    assert fastmri_center_fraction(6, 64, min_columns=8) == 8 / 64  # round(64 * 0.06) = 4 < 8
    assert fastmri_center_fraction(4, 256, min_columns=8) == 0.08
    assert seed_for("a.h5", 3, 7) == hash_seed("7:a.h5:3")
    assert hash_seed("1,2,3") == 1373727370  # the first 4 bytes of its SHA-256, little-endian
    assert [is_acceleration(x) for x in (1, 4.5, 0.99, float("nan"), float("inf"))] == [True, True, False, False, False]


def test_bootstrap_masks_leave_out_a_share_of_the_lines_outside_the_centre():
    from mrimsm.physics.masks import bootstrap_masks, central_run

    cols = np.stack([RandomCartesian(4, 0.125)((64, 64), s) for s in range(3)])
    mask = column_mask_tensor(cols)  # (3, 1, 1, 64)
    subs = bootstrap_masks(mask, 0.25, 4, seed=5)
    assert len(subs) == 4 and all(s.shape == mask.shape and s.dtype == mask.dtype for s in subs)
    for i in range(3):
        centre = central_run(cols[i])
        assert centre.stop - centre.start == 8
        outside = int(cols[i].sum()) - 8
        for s in subs:
            kept = s[i, 0, 0].numpy() > 0
            assert not (kept & ~cols[i]).any()  # a subset of the acquired lines
            assert kept[centre].all()  # the calibration block always stays
            assert int(cols[i].sum() - kept.sum()) == round(0.25 * outside)
    assert not torch.equal(subs[0], subs[1])  # each sample its own subset
    again = bootstrap_masks(mask, 0.25, 4, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(subs, again))  # same seed, same subsets
    assert all(torch.equal(s, mask) for s in bootstrap_masks(mask, 0.0, 2, seed=5))
    with pytest.raises(ValueError, match="share"):
        bootstrap_masks(mask, 1.0, 1, seed=0)


def test_bootstrap_masks_of_a_2d_mask_leave_out_pixels():
    from mrimsm.physics.masks import bootstrap_masks

    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    for s in bootstrap_masks(mask, 0.5, 3, seed=1):
        assert (s <= mask).all()
        for i in range(2):
            assert int(mask[i].sum() - s[i].sum()) == round(0.5 * int(mask[i].sum()))
