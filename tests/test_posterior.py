"""Posterior solver on a tiny (untrained, but non-trivial) model: finite output,
data consistency lowers the residual, determinism, settings validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrimsm.diffusion.consistency import MeasurementConsistency, OperatorConsistency
from mrimsm.diffusion.posterior import (
    PosteriorSettings,
    load_posterior_settings,
    posterior_sample,
)
from mrimsm.errors import MrimsmError
from mrimsm.physics import Downsample, Identity, MultiCoilMRI
from mrimsm.physics.masks import PaperCartesian, RandomCartesian, SubmaskSampler, column_mask_tensor


#: the paper's chain: from pure noise, no initial image
COLD = dict(t0=1.0, init="none")


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
    s = PosteriorSettings(steps=10, w=2, eta=0.85, samples=2, dc_step=1.0, **COLD)
    mean, std, samples = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=3)
    assert mean.shape == (2, 16, 16) and mean.dtype == torch.complex64
    assert std.shape == (2, 16, 16) and samples.shape == (2, 2, 16, 16)
    assert torch.isfinite(torch.view_as_real(mean)).all() and torch.isfinite(std).all()
    assert std.max() > 0  # two samples differ (eta > 0)
    prior_only = PosteriorSettings(steps=10, w=2, eta=0.85, samples=2, dc="measurement", dc_step=0.0, **COLD)
    mean0, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, prior_only, generator=3)
    r_dc, r_prior = _residual(op, mean, y), _residual(op, mean0, y)
    assert r_dc < 0.5 * r_prior, (r_dc, r_prior)


@pytest.mark.parametrize("placement", ["global", "local"])
def test_same_seed_same_samples(placement):
    den = _tiny_denoiser()
    op, x, y, mask = _problem(1)
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    s = PosteriorSettings(steps=5, w=1, eta=1.0, samples=1, placement=placement, **COLD,
                         dc="measurement" if placement == "local" else "operator")
    a, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=7)
    b, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=7)
    c, _, _ = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_measurement_consistency_projects_masks_and_downsampling():
    z = torch.randn(3, 2, 8, 8)
    mask = (torch.rand(1, 1, 8, 8) < 0.5).float()
    y = torch.randn(1, 2, 8, 8) * mask
    out = MeasurementConsistency(Identity(mask), y, 1.0).correct(z, 0)
    assert torch.allclose(out * mask, y.expand_as(out))  # measured entries replaced
    assert torch.allclose(out * (1 - mask), z * (1 - mask))  # others untouched
    D = Downsample(2)
    ylr = torch.randn(1, 2, 4, 4)
    out = MeasurementConsistency(D, ylr, 1.0).correct(z, 0)
    assert torch.allclose(D(out), ylr.expand(3, 2, 4, 4), atol=1e-6)


def test_settings_validation_and_yaml(tmp_path):
    # without a file: the dataclass defaults; a file replaces the keys it gives, overrides go on top
    assert load_posterior_settings(None) == PosteriorSettings()
    p = tmp_path / "s.yaml"
    p.write_text("posterior:\n  steps: 20\n  w: 1\n")
    s = load_posterior_settings(p, w=2)
    assert (s.steps, s.w, s.t0) == (20, 2, PosteriorSettings().t0)
    p.write_text("posterior:\n  stepz: 50\n")
    with pytest.raises(MrimsmError, match="stepz"):
        load_posterior_settings(p)
    for bad in [dict(steps=0), dict(w=0), dict(samples=0), dict(eta=2.0), dict(placement="x")]:
        with pytest.raises(MrimsmError):
            load_posterior_settings(None, **bad)


def test_settings_file_keys_have_the_fields_rules(tmp_path):
    """A file's keys meet the same annotations as the flags; the message names the file only
    for a key that came from it."""
    p = tmp_path / "s.yaml"
    p.write_text("posterior:\n  dc_lambda: 1e-4\n  init: cs\n")
    assert (load_posterior_settings(p).dc_lambda, load_posterior_settings(p).init) == (1e-4, "cs")
    with pytest.raises(MrimsmError, match=r"^steps must be >= 1, got 0$"):
        load_posterior_settings(p, steps=0)
    p.write_text("posterior:\n  steps: 2.5\n")
    with pytest.raises(MrimsmError, match=r"s\.yaml: steps must be an integer, got 2\.5$"):
        load_posterior_settings(p)


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
    settings = PosteriorSettings(steps=2, w=1, eta=1.0, samples=6, **COLD)
    _, std, samples = posterior_sample(zero_prior, Identity(), box, y, SubmaskSampler(BernoulliPixel(0.4), (8, 8)),
                                       settings, generator=0, image_shape=(1, 8, 8))
    expected = samples.std(0, correction=0)
    assert torch.allclose(std, expected, atol=1e-6)
    assert not torch.allclose(std, samples.abs().std(0, correction=0), atol=1e-4)


# -- data consistency through the operator, warm start, tweedie (issue: MSM vs CS) ---------


def test_operator_consistency_brings_the_residual_to_the_noise_level():
    op, x, y_clean, mask = _problem(seed=1, n=16, coils=4, slices=2)
    g = torch.Generator().manual_seed(5)
    noise = 0.01
    y = (y_clean + noise * torch.complex(torch.randn(y_clean.shape, generator=g),
                                         torch.randn(y_clean.shape, generator=g))) * mask
    x_bar = x + 0.3 * torch.complex(torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
    T = op.with_mask(None)
    z0 = T.full_forward(x_bar)[None]  # (K = 1, B, C, H, W)
    dc = OperatorConsistency(T, Identity(mask), y, lam=0.0, iters=40)
    x_dc = T.full_adjoint(dc.correct(z0, 0))[0]

    def rms(x_img):  # per measured complex entry
        return float((op(x_img) - y).abs().pow(2).sum() / mask.expand_as(y).sum()) ** 0.5

    noise_rms = noise * 2**0.5  # complex noise, std `noise` per real component
    assert rms(x_bar) > 10 * noise_rms
    assert rms(x_dc) <= noise_rms, (rms(x_dc), noise_rms)
    # a positive weight keeps it between the estimate and the data
    x_w = T.full_adjoint(OperatorConsistency(T, Identity(mask), y, lam=1.0, iters=40).correct(z0, 0))[0]
    assert noise_rms < rms(x_w) < rms(x_bar)


@pytest.mark.parametrize("kind", ["box", "sr4", "pixels"])
def test_operator_consistency_is_the_exact_projection_for_identity(kind):
    from mrimsm.physics import BoxMask, PixelMask

    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 1, 3, 16, 16, generator=g)  # (K, B, C, H, W) real images
    if kind == "box":
        H = BoxMask((16, 16), (8, 8))
    elif kind == "sr4":
        H = Downsample(4)
    else:
        H = PixelMask((torch.rand(1, 1, 16, 16, generator=g) < 0.4).float())
    y = H(torch.randn(1, 3, 16, 16, generator=g))
    expected = MeasurementConsistency(H, y, 1.0).correct(z, 0)
    got = OperatorConsistency(Identity(), H, y, lam=0.0, iters=1).correct(z, 0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_warm_start_with_t0_zero_returns_the_initial_image_and_runs_no_network():
    op, x, y, mask = _problem()
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))

    def no_network(u, t):
        raise AssertionError("t0 = 0 must not call the network")

    no_network.schedule = _tiny_denoiser().schedule
    s = PosteriorSettings(steps=10, w=1, samples=3, t0=0.0, init="sense")
    mean, std, samples = posterior_sample(no_network, op.with_mask(None), Identity(mask), y, sampler, s,
                                          generator=0, x_init=x)
    assert samples.shape == (3, *x.shape)
    torch.testing.assert_close(mean, x)
    assert float(std.abs().max()) == 0.0


@pytest.mark.parametrize("dc", ["operator", "tweedie"])
def test_warm_start_same_seed_same_result_and_stays_near_its_start(dc):
    den = _tiny_denoiser()
    op, x, y, mask = _problem()
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    s = PosteriorSettings(steps=4, w=2, samples=2, t0=0.1, init="sense", dc=dc, dc_lambda=0.01, dc_iters=3)
    run = lambda seed: posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s,  # noqa: E731
                                        generator=seed, x_init=x)[2]
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(torch.view_as_real(a)).all()
    # a start at t0 = 0.01 (sigma_t ~ 0.05) stays near its initial image, a cold chain does not
    near = PosteriorSettings(steps=4, w=2, samples=2, t0=0.01, init="sense", dc=dc, dc_lambda=0.01, dc_iters=3)
    cold = PosteriorSettings(steps=4, w=2, samples=2, dc=dc, dc_lambda=0.01, dc_iters=3, **COLD)
    close = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, near, generator=7, x_init=x)[2]
    far = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, cold, generator=7)[2]
    assert (close - x).norm() < 0.5 * (far - x).norm(), (float((close - x).norm()), float((far - x).norm()))


@pytest.mark.parametrize("bad, word", [
    (dict(t0=1.5), "t0"), (dict(t0=-0.1), "t0"), (dict(t0=float("nan")), "t0"),
    (dict(dc_lambda=-1.0), "dc_lambda"), (dict(dc="gradient"), "dc"), (dict(init="bicubic"), "init"),
    (dict(t0=0.5, init="none"), "initial image"), (dict(dc_noise=-0.1), "dc_noise"), (dict(dc_iters=0), "dc_iters"),
    (dict(dc="operator", placement="local"), "placement"),
])
def test_bad_solver_settings_are_one_line_errors(bad, word):
    with pytest.raises(MrimsmError, match=word) as info:
        PosteriorSettings(**bad).validate()
    assert "\n" not in str(info.value)


def test_bad_solver_settings_from_the_command_line(fastmri_sample, tmp_path, capsys):
    from mrimsm.cli.main import main

    for flags in (["--t0", "1.5", "--init", "sense"], ["--dc-lambda", "-1"], ["--init", "nonsense"]):
        rc = main(["recon", str(fastmri_sample), "--accel", "4", "-m", "msm", "-o", str(tmp_path / "x.h5"),
                   "-q", *flags])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (flags, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.h5").exists()


# -- the solver against a true posterior (Gaussian prior, exact local denoisers) -----------


def _gaussian_posterior_problem():
    """Row-independent Gaussian z (16 pixels) observed on 9 pixels, no noise: the closed-form
    posterior mean ``Sigma_UM Sigma_MM^-1 y`` and the posterior standard deviations."""
    from test_sampler import H as GH, W as GW, RowMasks, _row_block_sigma

    sigma = _row_block_sigma()
    g = torch.Generator().manual_seed(0)
    z = (torch.linalg.cholesky(sigma) @ torch.randn(GH * GW, generator=g, dtype=torch.float64)).float()
    hmask = torch.zeros(1, 1, GH, GW)
    hmask[..., :2] = 1  # two of the four pixels of every row, and one more in row 0
    hmask[..., 0, 2] = 1
    y = z.reshape(1, 1, GH, GW) * hmask
    m = hmask.flatten().bool().numpy()
    s = sigma.numpy()
    gain = s[np.ix_(~m, m)] @ np.linalg.inv(s[np.ix_(m, m)])
    mean_u = gain @ y.flatten().numpy()[m]
    sd_u = np.sqrt(np.diag(s[np.ix_(~m, ~m)] - gain @ s[np.ix_(m, ~m)]))
    return sigma, hmask, y, m, mean_u, sd_u, RowMasks(0.5)


def _posterior_mean_z_scores(settings: PosteriorSettings, n: int) -> np.ndarray:
    """Sample-mean error on the unobserved pixels in units of its standard error."""
    import mrimsm.diffusion.sampler as sampler_mod
    from mrimsm.physics import PixelMask
    from test_sampler import H as GH, SCH, W as GW, _pixel_shape, exact_local_denoiser

    sigma, hmask, y, m, mean_u, sd_u, masks = _gaussian_posterior_problem()
    local = exact_local_denoiser(sigma, 1.0, _pixel_shape)
    real = sampler_mod.msm_sample

    def with_exact_denoiser(*args, **kwargs):
        return real(*args, local_denoise=local, **kwargs)

    sampler_mod.msm_sample = with_exact_denoiser  # posterior_sample imports it at call time
    try:
        _, _, samples = posterior_sample(None, Identity(), PixelMask(hmask), y, masks, settings, generator=1,
                                         image_shape=(1, GH, GW), schedule=SCH)
    finally:
        sampler_mod.msm_sample = real
    xs = samples.reshape(n, -1).double().numpy()
    return (xs[:, ~m].mean(0) - mean_u) / (sd_u / np.sqrt(n))


def test_tweedie_consistency_samples_the_true_gaussian_posterior_mean_and_the_published_rule_does_not():
    n = 1000
    common = dict(steps=40, w=3, eta=1.0, samples=n, **COLD)
    z_tweedie = _posterior_mean_z_scores(PosteriorSettings(dc="tweedie", dc_noise=0.0, dc_iters=16, **common), n)
    # within sampling error of Sigma_UM Sigma_MM^-1 y (7 unobserved pixels)
    assert np.sqrt(np.mean(z_tweedie**2)) < 2.0 and np.abs(z_tweedie).max() < 4.0, z_tweedie
    # the published code's rule (reflection, dc_step 2, on each local estimate) and the
    # projection rules condition only the observed pixels: biased by many standard errors
    for rule in (dict(dc="measurement", dc_step=2.0, placement="local"), dict(dc="operator", dc_lambda=0.0)):
        z = _posterior_mean_z_scores(PosteriorSettings(**rule, **common), n)
        assert np.sqrt(np.mean(z**2)) > 8.0, (rule, z)


def _posterior_std_ratio(settings: PosteriorSettings, n: int, kappa: float = 1.0) -> np.ndarray:
    """Std of the samples on the unobserved pixels over the true posterior std, per pixel
    (``kappa`` != 1: local denoisers that assume ``kappa`` times the true noise variance)."""
    import mrimsm.diffusion.sampler as sampler_mod
    from mrimsm.physics import PixelMask
    from test_sampler import H as GH, SCH, W as GW, _pixel_shape, exact_local_denoiser

    sigma, hmask, y, m, mean_u, sd_u, masks = _gaussian_posterior_problem()
    local = exact_local_denoiser(sigma, kappa, _pixel_shape)
    real = sampler_mod.msm_sample

    def with_exact_denoiser(*args, **kwargs):
        return real(*args, local_denoise=local, **kwargs)

    x_init = None
    if settings.t0 < 1.0:  # a warm start from the true posterior mean
        x_init = y.clone().reshape(-1)
        x_init[torch.from_numpy(~m)] = torch.from_numpy(mean_u).float()
        x_init = x_init.reshape(1, 1, GH, GW)
    sampler_mod.msm_sample = with_exact_denoiser
    try:
        _, _, samples = posterior_sample(None, Identity(), PixelMask(hmask), y, masks, settings, generator=3,
                                         image_shape=(1, GH, GW), schedule=SCH, x_init=x_init)
    finally:
        sampler_mod.msm_sample = real
    xs = samples.reshape(n, -1).double().numpy()
    return xs[:, ~m].std(0) / sd_u


def test_the_spread_of_the_samples_is_the_true_posterior_std():
    """What the uncertainty map is: with exact local denoisers and the tweedie rule, the
    samples' std on the unobserved pixels matches the closed-form posterior std (7 pixels,
    200 samples: a ratio's sampling error is about 5 %; 100 steps leave a few % of
    discretisation bias). The same check flags a solver whose samples collapse (a warm
    start at t0 = 0.05) and one that over-disperses (denoisers that under-remove noise)."""
    n = 200
    common = dict(steps=100, w=3, eta=1.0, samples=n, dc="tweedie", dc_noise=0.0, dc_iters=16)
    ratio = _posterior_std_ratio(PosteriorSettings(**common, **COLD), n)
    assert 0.88 < ratio.mean() < 1.1 and ((ratio > 0.7) & (ratio < 1.3)).all(), ratio
    collapsed = _posterior_std_ratio(PosteriorSettings(**{**common, "steps": 20}, t0=0.05, init="sense"), n)
    assert collapsed.mean() < 0.6, collapsed
    over = _posterior_std_ratio(PosteriorSettings(**{**common, "steps": 40}, **COLD), n, kappa=0.3)
    assert over.mean() > 1.25, over


def test_bootstrap_samples_each_fit_their_own_subset_of_the_data():
    """``bootstrap``: sample k's data consistency sees only its own subset of the acquired
    lines (with ``dc_lambda = 0`` it is the projection onto that subset's data), so the
    samples fit those lines and not the ones they left out; same seed, same samples."""
    from mrimsm.diffusion.sampler import as_generator
    from mrimsm.physics.masks import bootstrap_masks

    den = _tiny_denoiser()
    op, x, _, _ = _problem(2)
    mask = column_mask_tensor(np.stack([RandomCartesian(2, 0.25)((16, 16), s) for s in range(2)]))
    op = op.with_mask(mask)
    y = op(x)
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    s = PosteriorSettings(steps=4, w=1, eta=1.0, samples=3, dc_lambda=0.0, dc_schedule="fixed", dc_iters=40,
                          bootstrap=0.5, **COLD)
    steps_seen = []
    mean, std, samples = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=4,
                                          on_step=lambda done, total: steps_seen.append((done, total)))
    assert samples.shape == (3, 2, 16, 16) and std.max() > 0
    assert len(steps_seen) % 3 == 0 and steps_seen[-1] == (len(steps_seen), len(steps_seen))  # all 3 chains
    seed = int(torch.randint(0, 2**62, (1,), generator=as_generator(4)))
    subsets = bootstrap_masks(mask, 0.5, 3, seed)
    for k in range(3):
        left_out = mask - subsets[k]
        assert left_out.sum() > 0
        fit_kept = _residual(op.with_mask(subsets[k]), samples[k], y * subsets[k])
        fit_left_out = _residual(op.with_mask(left_out), samples[k], y * left_out)
        assert fit_kept < 1e-2 < fit_left_out, (k, fit_kept, fit_left_out)
    again = posterior_sample(den, op.with_mask(None), Identity(mask), y, sampler, s, generator=4)[2]
    assert torch.equal(samples, again)


def test_bootstrap_needs_a_masked_test_operator():
    den = _tiny_denoiser()
    sampler = SubmaskSampler(PaperCartesian(4, 4), (16, 16))
    y = torch.randn(1, 2, 8, 8)
    s = PosteriorSettings(steps=2, w=1, samples=2, bootstrap=0.2, **COLD)
    with pytest.raises(MrimsmError, match="bootstrap needs a masked test operator"):
        posterior_sample(den, Identity(), Downsample(2), y, sampler, s, generator=0, image_shape=(2, 16, 16))
