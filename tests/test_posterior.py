"""Posterior solver on a tiny (untrained, but non-trivial) model: finite output,
data consistency lowers the residual, determinism, settings validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrimsm.diffusion.posterior import (
    PosteriorSettings,
    load_posterior_settings,
    measurement_consistency,
    posterior_sample,
)
from mrimsm.errors import MrimsmError
from mrimsm.physics import Downsample, Identity, MultiCoilMRI
from mrimsm.physics.masks import PaperCartesian, RandomCartesian, SubmaskSampler, column_mask_tensor


def _tiny_denoiser(seed: int = 0):
    from mrimsm.diffusion.denoiser import MSMDenoiser
    from mrimsm.diffusion.schedule import VPSchedule
    from mrimsm.models.unet import UNet

    torch.manual_seed(seed)
    net = UNet(2, 2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
               num_head_channels=8, image_size=16)
    # the output conv starts at zero: give it weights so the prior is not trivial
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return MSMDenoiser(net, VPSchedule()).eval()


def _problem(seed: int = 0, n: int = 16, coils: int = 4, slices: int = 2):
    import sigpy.mri

    g = torch.Generator().manual_seed(seed)
    # smooth birdcage coils, normalized to sum_c |C_c|^2 = 1 (as ESPIRiT maps are)
    bc = torch.from_numpy(sigpy.mri.birdcage_maps((coils, n, n)).astype(np.complex64))
    maps = (bc / bc.abs().pow(2).sum(0, keepdim=True).sqrt())[None].repeat(slices, 1, 1, 1)
    x = torch.complex(torch.randn(slices, n, n, generator=g), torch.randn(slices, n, n, generator=g)) * 0.3
    mask = column_mask_tensor(np.stack([RandomCartesian(4, 0.25)((n, n), seed + s) for s in range(slices)]))
    op = MultiCoilMRI(maps, mask)
    y = op(x)
    return op, x, y, mask


def _residual(op, x, y):
    return float((op(x) - y).abs().pow(2).sum().sqrt() / y.abs().pow(2).sum().sqrt())


def test_data_consistency_lowers_residual_and_is_finite():
    den = _tiny_denoiser()
    op, x, y, mask = _problem()
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    s = PosteriorSettings(steps=10, w=2, eta=0.85, samples=2, dc_step=1.0)
    mean, std, samples = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=3)
    assert mean.shape == (2, 16, 16) and mean.dtype == torch.complex64
    assert std.shape == (2, 16, 16) and samples.shape == (2, 2, 16, 16)
    assert torch.isfinite(torch.view_as_real(mean)).all() and torch.isfinite(std).all()
    assert std.max() > 0  # two samples differ (eta > 0)
    prior_only = PosteriorSettings(steps=10, w=2, eta=0.85, samples=2, dc_step=0.0)
    mean0, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, prior_only, generator=3)
    r_dc, r_prior = _residual(op, mean, y), _residual(op, mean0, y)
    assert r_dc < 0.5 * r_prior, (r_dc, r_prior)


@pytest.mark.parametrize("placement", ["global", "local"])
def test_same_seed_same_samples(placement):
    den = _tiny_denoiser()
    op, x, y, mask = _problem(1)
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    s = PosteriorSettings(steps=5, w=1, eta=1.0, samples=1, placement=placement)
    a, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=7)
    b, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=7)
    c, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_consistency_hook_projects_masks_and_downsampling():
    z = torch.randn(3, 2, 8, 8)
    mask = (torch.rand(1, 1, 8, 8) < 0.5).float()
    y = torch.randn(1, 2, 8, 8) * mask
    out = measurement_consistency(Identity(mask), y, 1.0)(z, 0)
    assert torch.allclose(out * mask, y.expand_as(out))  # measured entries replaced
    assert torch.allclose(out * (1 - mask), z * (1 - mask))  # others untouched
    D = Downsample(2)
    ylr = torch.randn(1, 2, 4, 4)
    out = measurement_consistency(D, ylr, 1.0)(z, 0)
    assert torch.allclose(D(out), ylr.expand(3, 2, 4, 4), atol=1e-6)


def test_settings_validation_and_yaml(tmp_path):
    assert load_posterior_settings(None).steps == 200
    p = tmp_path / "s.yaml"
    p.write_text("posterior:\n  steps: 50\n  w: 1\n")
    s = load_posterior_settings(p, w=2)
    assert (s.steps, s.w) == (50, 2)
    p.write_text("posterior:\n  stepz: 50\n")
    with pytest.raises(MrimsmError, match="stepz"):
        load_posterior_settings(p)
    for bad in [dict(steps=0), dict(w=0), dict(samples=0), dict(eta=2.0), dict(placement="x")]:
        with pytest.raises(MrimsmError):
            load_posterior_settings(None, **bad)


def test_uncertainty_is_the_std_of_the_value_for_real_images():
    """Signed real images (natural images in [-1, 1]): the std of the value, not of |x|."""
    from mrimsm.diffusion.posterior import PosteriorSettings, posterior_sample
    from mrimsm.diffusion.schedule import VPSchedule
    from mrimsm.physics.masks import BernoulliPixel, SubmaskSampler
    from mrimsm.physics.operators import BoxMask, Identity

    def zero_prior(u, t):  # passes its noisy input through: samples of both signs around 0
        return u

    zero_prior.schedule = VPSchedule()
    box = BoxMask((8, 8), (4, 4))
    y = box(torch.zeros(1, 1, 8, 8))
    settings = PosteriorSettings(steps=2, w=1, eta=1.0, samples=6)
    _, std, samples = posterior_sample(zero_prior, Identity(), box, y, SubmaskSampler(BernoulliPixel(0.4), (8, 8)),
                                       settings, generator=0, image_shape=(1, 8, 8))
    expected = samples.std(0, correction=0)
    assert torch.allclose(std, expected, atol=1e-6)
    assert not torch.allclose(std, samples.abs().std(0, correction=0), atol=1e-4)
