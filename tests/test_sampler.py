"""Algorithm 1 (msm_sample) checked against closed-form Gaussian answers.

For Gaussian data z ~ N(0, Sigma) the exact MMSE denoiser of any subsampled noisy
measurement is linear, ``E[S z | S z + sigma n] = Sigma_SS (Sigma_SS + k sigma^2 I)^-1``
(``k`` = 1 real, 2 complex: noise is per real component). With it, the sampler with
``w -> infinity`` (aggregation = exact expectation over the mask family) is a linear
Gaussian recursion whose output covariance we compute in closed form ("ideal MSM").

* When every mask is a union of independent blocks of z, the local scores are exact,
  the ideal MSM sampler IS the exact-score DDIM sampler, and its covariance tends to
  Sigma as the number of steps grows: samples must match, and larger w must be closer.
* For a fully correlated Sigma the ideal MSM distribution differs from Sigma (the
  method's approximation: averaged local scores are not the full score); the
  sampler must still converge to the ideal one as w grows.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from mrimsm.diffusion.consistency import DataConsistency
from mrimsm.diffusion.denoiser import MSMDenoiser
from mrimsm.diffusion.sampler import (
    ddim_coefficients,
    msm_sample,
    network_local_denoiser,
    sampling_timesteps,
)
from mrimsm.diffusion.losses import gaussian_like
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.errors import MrimsmError
from mrimsm.models.unet import UNet
from mrimsm.physics.masks import PaperCartesian, SubmaskSampler
from mrimsm.physics.operators import Identity, MultiCoilMRI

SCH = VPSchedule()
H = W = 4
D = H * W


# -- Gaussian models and their exact local denoisers ------------------------------


def _row_block_sigma() -> torch.Tensor:
    """(16, 16): the 4 rows independent, strong correlation inside each row."""
    j = np.arange(W)
    blk = np.exp(-((j[:, None] - j[None]) ** 2) / (2 * 1.5**2)) + 0.05 * np.eye(W)
    return torch.tensor(np.kron(np.eye(H), blk))


def _correlated_sigma() -> torch.Tensor:
    """(16, 16): every pixel correlated with every other (squared-exponential)."""
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    p = np.stack([ii.ravel(), jj.ravel()], 1)
    return torch.tensor(np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / (2 * 1.5**2)) + 0.05 * np.eye(D))


class RowMasks:
    """Keeps each image row with probability p: (n, 1, H, W) masks, vectorised draws."""

    def __init__(self, p: float):
        self.p = p

    def draw(self, n, rng, device="cpu"):
        rows = rng.random((n, 1, H, 1)) < self.p
        return torch.as_tensor(np.broadcast_to(rows, (n, 1, H, W)).copy(), dtype=torch.float32)

    def family(self):
        """All masks as flat (D,) vectors with their probabilities."""
        out = []
        for bits in itertools.product([0, 1], repeat=H):
            prob = np.prod([self.p if b else 1 - self.p for b in bits])
            if prob > 0:
                out.append((np.repeat(np.array(bits, float), W), prob))
        return out


def exact_local_denoiser(sigma_z: torch.Tensor, kappa: float, shape_fn):
    """local_denoise(op_S, y_t, t) = E[S z | y_t] for z ~ N(0, sigma_z); kappa = noise variance factor."""
    d = sigma_z.shape[0]

    def local(op_s, y_t, t):
        sig2 = float(SCH.sigma(t)) ** 2
        ab = float(SCH.alpha_bar(t))
        shp = y_t.shape
        y = (y_t / math.sqrt(ab)).reshape(-1, d).to(sigma_z.dtype)
        m = shape_fn(op_s.mask, shp).reshape(-1, d).to(torch.float64)
        # one gain matrix per distinct mask: Sigma_SS (Sigma_SS + kappa sigma^2 I)^-1 on S, 0 elsewhere
        patterns, which = torch.unique(m, dim=0, return_inverse=True)
        gains = torch.zeros(len(patterns), d, d, dtype=sigma_z.dtype)
        for i, pat in enumerate(patterns):
            idx = torch.nonzero(pat).flatten().numpy()
            sub = sigma_z[np.ix_(idx, idx)]
            rhs = torch.eye(len(idx), dtype=sigma_z.dtype)
            gains[i][np.ix_(idx, idx)] = sub @ torch.linalg.solve(sub + kappa * sig2 * rhs, rhs)
        return (gains[which] @ y.unsqueeze(-1)).squeeze(-1).to(y_t.dtype).reshape(shp)

    return local


def ideal_covariance(sigma_z, family, steps, eta=1.0, kappa=1.0):
    """Output covariance of the w -> infinity sampler, in closed form (float64/complex128)."""
    d = sigma_z.shape[0]
    eye = torch.eye(d, dtype=sigma_z.dtype)
    p_cov = sum(prob * torch.as_tensor(m) for m, prob in family)
    weight = 1.0 / p_cov.clamp(min=1e-300)

    def gain(t):  # z0_hat = gain(t) @ (z_t / sqrt(abar_t))
        sig2 = float(SCH.sigma(t)) ** 2
        out = torch.zeros_like(eye)
        for m, prob in family:
            idx = np.flatnonzero(m)
            sub = sigma_z[np.ix_(idx, idx)]
            k = sub @ torch.linalg.inv(sub + kappa * sig2 * torch.eye(len(idx), dtype=sigma_z.dtype))
            out[np.ix_(idx, idx)] += prob * k
        return weight.to(out.dtype)[:, None] * out

    cov = kappa * eye  # z_T ~ N(0, I) per real component
    for _, t, t_prev in sampling_timesteps(SCH, steps):
        co = ddim_coefficients(SCH, t, t_prev, eta)
        g = gain(t) / co["sqrt_ab_t"]
        if t_prev == -1:
            return g @ cov @ g.mH
        step = co["a"] * g + co["c_eps"] / co["sqrt_1m_ab_t"] * eye
        cov = step @ cov @ step.mH + kappa * co["noise_std"] ** 2 * eye


def sampling_sd(cov, n):
    """RMS relative Frobenius error of a sample covariance from n Gaussian draws
    (the noise floor: an exact sampler's error is about this, never near 0).
    Real: E(C^_ij - C_ij)^2 = (C_ii C_jj + C_ij^2) / n; circular complex: C_ii C_jj / n."""
    var = cov.diagonal().real
    second = 0 if cov.is_complex() else cov**2
    return math.sqrt(float((torch.outer(var, var) + second).sum()) / n) / float(cov.norm())


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _pixel_shape(mask, shp):
    return mask.expand(shp)


def replace_sample(local_denoise, op_full, mask_sampler, n, steps, w, eta, seed, image_shape, schedule=SCH):
    """The literal in-loop variant of Algorithm 1, for comparison with :func:`msm_sample`:
    each local estimate takes its own DDIM step ``t -> t_prev``, written back into ``z`` on
    ``S_i`` (later masks read what earlier ones wrote); entries no mask covers do not move.
    Same seeding as ``msm_sample``; no warm start, no hooks. Returns ``(N, *image)``."""
    g = torch.Generator().manual_seed(seed)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    op_full = op_full.with_mask(None)
    z_like = op_full.full_forward(torch.zeros((1, *image_shape)))
    b = z_like.shape[0]
    k = n // b
    z = gaussian_like(torch.zeros((k, b, *z_like.shape[1:]), dtype=z_like.dtype), g)
    z0_hat = torch.zeros_like(z)
    for _, t, t_prev in sampling_timesteps(schedule, steps):
        co = ddim_coefficients(schedule, t, t_prev, eta)
        acc, cov = torch.zeros_like(z), None
        for _ in range(w):
            mask = mask_sampler.draw(n, np_rng)
            mask = mask.reshape(k, b, *mask.shape[1:])
            op_s = op_full.with_mask(mask)
            y_t = op_s.apply_mask(z)
            s_hat = op_s.apply_mask(local_denoise(op_s, y_t, t))
            acc, cov = acc + s_hat, mask if cov is None else cov + mask
            eps = (y_t - co["sqrt_ab_t"] * s_hat) / co["sqrt_1m_ab_t"]
            y_prev = co["sqrt_ab_prev"] * s_hat + co["c_eps"] * eps
            if co["noise_std"] > 0:
                y_prev = y_prev + co["noise_std"] * op_s.apply_mask(gaussian_like(z, g))
            z = z - y_t + y_prev
        z0_hat = torch.where((cov > 0).expand_as(z), acc * SubmaskSampler.weights(cov), z0_hat)
    images = op_full.full_adjoint(z0_hat)
    return images.reshape(n, *images.shape[2:])


def _sample_identity(sigma_z, masks, n, steps, w, update="global", seed=0):
    local = exact_local_denoiser(sigma_z, 1.0, _pixel_shape)
    if update == "replace":
        x = replace_sample(local, Identity(), masks, n, steps, w, 1.0, seed, (1, H, W))
    else:
        x = msm_sample(None, Identity(), masks, n, steps=steps, w=w, eta=1.0, generator=seed, schedule=SCH,
                       local_denoise=local, image_shape=(1, H, W))
    xs = x.reshape(n, D).double()
    return xs.mean(0), xs.T @ xs / n


# -- the analytic tests ------------------------------------------------------------

N, STEPS = 3000, 50


def test_exact_score_sampler_matches_its_closed_form_and_sigma():
    # every mask full: the local denoiser is the full MMSE denoiser (plain DDIM)
    sigma_z = _correlated_sigma()
    full = RowMasks(1.0)
    ideal = ideal_covariance(sigma_z, full.family(), STEPS)
    mean, cov = _sample_identity(sigma_z, full, N, STEPS, w=1)
    sd = sampling_sd(ideal, N)
    print(f"exact score: sample vs closed form {rel(cov, ideal):.4f} (sampling sd {sd:.4f}); "
          f"closed form vs Sigma {rel(ideal, sigma_z):.4f} at {STEPS} steps, "
          f"{rel(ideal_covariance(sigma_z, full.family(), 200), sigma_z):.4f} at 200")
    assert rel(cov, ideal) < 1.8 * sd
    assert (mean.abs() < 4 * torch.sqrt(cov.diagonal() / N)).all()
    # the DDIM discretisation itself converges to Sigma with more steps
    assert rel(ideal_covariance(sigma_z, full.family(), 200), sigma_z) < 0.5 * rel(ideal, sigma_z)


def test_block_gaussian_samples_approach_sigma_as_w_grows():
    # rows independent and masks made of whole rows: MSM is exact, ideal = exact-score DDIM
    sigma_z = _row_block_sigma()
    rows = RowMasks(0.5)
    ideal = ideal_covariance(sigma_z, rows.family(), STEPS)
    exact = ideal_covariance(sigma_z, RowMasks(1.0).family(), STEPS)
    assert rel(ideal, exact) < 1e-10
    sd = sampling_sd(ideal, N)
    errs = {}
    for w in (1, 3):
        mean, cov = _sample_identity(sigma_z, rows, N, STEPS, w)
        errs[w] = (rel(cov, ideal), rel(cov, sigma_z))
        assert (mean.abs() < 4 * torch.sqrt(cov.diagonal() / N)).all()
    print(f"block: w=1 vs ideal {errs[1][0]:.4f} vs Sigma {errs[1][1]:.4f}; "
          f"w=3 vs ideal {errs[3][0]:.4f} vs Sigma {errs[3][1]:.4f}; ideal vs Sigma {rel(ideal, sigma_z):.4f}; sd {sd:.4f}")
    assert errs[3][0] < 1.8 * sd  # w = 3 reaches the ideal sampler within sampling noise
    assert errs[1][0] > 2.5 * sd and errs[1][0] > errs[3][0]  # w = 1 is measurably further away
    assert errs[1][1] > errs[3][1]  # ... and further from Sigma


def test_correlated_gaussian_converges_to_the_ideal_msm_sampler():
    sigma_z = _correlated_sigma()
    rows = RowMasks(0.5)
    ideal = ideal_covariance(sigma_z, rows.family(), STEPS)
    sd = sampling_sd(ideal, N)
    err1 = rel(_sample_identity(sigma_z, rows, N, STEPS, 1)[1], ideal)
    err3 = rel(_sample_identity(sigma_z, rows, N, STEPS, 3)[1], ideal)
    print(f"correlated: w=1 {err1:.4f} w=3 {err3:.4f} vs ideal; ideal MSM vs Sigma {rel(ideal, sigma_z):.4f}; sd {sd:.4f}")
    assert err3 < 1.8 * sd and err1 > 2.5 * sd and err1 > err3
    # the model's own approximation: averaged local scores are not the full score
    assert rel(ideal, sigma_z) > 0.2


def test_replace_update_overdisperses_with_many_masks():
    # why "global" is the default: the literal in-loop replacement steps an entry again
    # each time another mask covers it, and the variance grows with w
    sigma_z = _row_block_sigma()
    rows = RowMasks(0.5)
    ideal = ideal_covariance(sigma_z, rows.family(), STEPS)
    _, cov_replace = _sample_identity(sigma_z, rows, 1000, STEPS, 6, update="replace")
    _, cov_global = _sample_identity(sigma_z, rows, 1000, STEPS, 6, update="global")
    ratio_replace = float(cov_replace.trace() / ideal.trace())
    ratio_global = float(cov_global.trace() / ideal.trace())
    print(f"w=6 variance / ideal: replace {ratio_replace:.3f}, global {ratio_global:.3f}")
    assert ratio_replace > 1.3 and abs(ratio_global - 1) < 0.1


def _column_shape(mask, shp):
    return mask.expand(shp)


class ColumnMasks:
    """Center 2 columns always, the others with probability p: (n, 1, 1, W)."""

    def __init__(self, w, p):
        self.w, self.p = w, p
        self.center = [w // 2 - 1, w // 2]

    def draw(self, n, rng, device="cpu"):
        cols = rng.random((n, 1, 1, self.w)) < self.p
        cols[..., self.center] = True
        return torch.as_tensor(cols, dtype=torch.float32)

    def family(self, h):
        others = [c for c in range(self.w) if c not in self.center]
        out = []
        for bits in itertools.product([0, 1], repeat=len(others)):
            cols = np.zeros(self.w)
            cols[self.center] = 1
            cols[others] = bits
            prob = np.prod([self.p if b else 1 - self.p for b in bits])
            out.append((np.tile(cols, h), prob))  # (H, W) flattened row-major
        return out


def test_single_coil_mri_complex_gaussian_with_column_masks(seed=1):
    # MultiCoilMRI (one coil, unit map): z = F x. k-space columns independent (complex
    # Hermitian blocks per column) and 1-D column masks: MSM is exact here too.
    h, w = 4, 6
    g = torch.Generator().manual_seed(0)
    d = h * w
    gamma = torch.zeros(d, d, dtype=torch.complex128)
    for c in range(w):
        a = torch.randn(h, h, dtype=torch.complex128, generator=g)
        blk = a @ a.mH / h + 0.05 * torch.eye(h, dtype=torch.complex128)
        idx = np.arange(h) * w + c
        gamma[np.ix_(idx, idx)] = blk
    masks = ColumnMasks(w, 0.5)
    op = MultiCoilMRI(torch.ones(1, 1, h, w, dtype=torch.complex64))
    local = exact_local_denoiser(gamma, 2.0, _column_shape)
    ideal_z = ideal_covariance(gamma, masks.family(h), STEPS, kappa=2.0)
    # image covariance E[x x^H] with x = F^H z (the sampler returns T^H z0_hat)
    fmat = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(
        torch.eye(d, dtype=torch.complex128).reshape(d, h, w), dim=(-2, -1)), norm="ortho"), dim=(-2, -1)).reshape(d, d).T
    ideal_x = fmat.mH @ ideal_z @ fmat
    n = 1500
    sd = sampling_sd(ideal_x, n)
    errs = {}
    for wv in (1, 3):
        x = msm_sample(None, op, masks, n, steps=STEPS, w=wv, generator=seed, schedule=SCH, local_denoise=local)
        assert x.shape == (n, h, w) and x.dtype == torch.complex64
        xs = x.reshape(n, d).to(torch.complex128)
        errs[wv] = rel(xs.T @ xs.conj() / n, ideal_x)
    print(f"single-coil MRI: w=1 {errs[1]:.4f} w=3 {errs[3]:.4f} vs ideal (= exact score); "
          f"ideal vs Gamma {rel(ideal_z, gamma):.4f}; sd {sd:.4f}")
    assert errs[3] < 1.8 * sd and errs[1] > 1.5 * sd and errs[1] > errs[3]


# -- the network path, hooks, seeding, errors ----------------------------------------------


def _tiny_setup(coils=2, size=16, batch=1, seed=0):
    torch.manual_seed(seed)
    net = UNet(2, 2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,), num_head_channels=16, image_size=size)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)
    den = MSMDenoiser(net, SCH)
    maps = torch.randn(batch, coils, size, size, dtype=torch.complex64)
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    sampler = SubmaskSampler(PaperCartesian(accel=4, center_lines=4), (size, size))
    return den, MultiCoilMRI(maps), sampler


def test_network_sampling_is_seeded_finite_and_shaped():
    den, op, sampler = _tiny_setup()
    den.train()
    a = msm_sample(den, op, sampler, 2, steps=4, w=2, generator=7)
    assert den.training  # mode restored
    assert a.shape == (2, 16, 16) and a.dtype == torch.complex64 and torch.isfinite(a).all()
    b = msm_sample(den, op, sampler, 2, steps=4, w=2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = msm_sample(den, op, sampler, 2, steps=4, w=2, generator=8)
    assert not torch.allclose(a, c)
    # the default local denoiser is exactly the wrapper around the image-domain denoiser
    d = msm_sample(den, op, sampler, 2, steps=4, w=2, generator=7, local_denoise=network_local_denoiser(den))
    assert torch.equal(a, d)
    r = replace_sample(network_local_denoiser(den), op, sampler, 2, 4, 2, 0.0, 7, (16, 16), schedule=den.schedule)
    assert r.shape == a.shape and torch.isfinite(r).all()


def test_batched_maps_uncertainty_and_state():
    den, op, sampler = _tiny_setup(batch=2)
    seen = []

    def local(op_s, y_t, t):
        seen.append(tuple(y_t.shape))
        return network_local_denoiser(den)(op_s, y_t, t)

    states = []

    class Record(DataConsistency):  # the aggregated estimate of every step, unchanged
        def correct(self, z0_hat, t_index, z_t=None):
            states.append(z0_hat)
            return z0_hat

    x = msm_sample(den, op, sampler, 6, steps=3, w=1, generator=0, local_denoise=local, consistency=Record())
    z0 = states[-1].reshape(6, 2, 16, 16)
    unc = x.abs().reshape(3, 2, 16, 16).std(dim=0, correction=0)  # over the K = 3 samples per batch element
    assert x.shape == (6, 16, 16) and unc.shape == (2, 16, 16) and z0.shape == (6, 2, 16, 16)
    assert set(seen) == {(3, 2, 2, 16, 16)}  # (K, B, C, H, W)
    assert (unc >= 0).all() and unc.max() > 0
    # sample j uses maps[j % B]: its image is T^H of its own state
    assert torch.allclose(x, op.full_adjoint(z0.reshape(3, 2, 2, 16, 16)).reshape(6, 16, 16), atol=1e-6)
    with pytest.raises(MrimsmError):
        msm_sample(den, op, sampler, 3, steps=2)


def test_data_consistency_rules_are_applied():
    den, op, sampler = _tiny_setup()
    test_mask = torch.zeros(1, 1, 1, 16)
    test_mask[..., ::3] = 1
    y = MultiCoilMRI(op.maps, test_mask)(torch.randn(1, 16, 16, dtype=torch.complex64))
    calls = []
    states = []
    local_calls = []

    class ReplaceMeasured(DataConsistency):
        def correct(self, z0_hat, t_index, z_t=None):
            calls.append(t_index)
            out = z0_hat * (1 - test_mask) + y * test_mask  # y (B, ...) broadcasts over (K, B, ...)
            states.append(out)
            return out

        def correct_local(self, s_hat, op_s, t_index):
            local_calls.append(t_index)
            return s_hat

    msm_sample(den, op, sampler, 2, steps=5, w=2, generator=0, consistency=ReplaceMeasured())
    z0 = states[-1].reshape(2, 2, 16, 16)
    assert calls == [4, 3, 2, 1, 0]
    assert local_calls == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert torch.allclose(z0 * test_mask, (y * test_mask).expand(2, -1, -1, -1), atol=1e-6)
    free_states = []

    class Free(DataConsistency):
        def correct(self, z0_hat, t_index, z_t=None):
            free_states.append(z0_hat)
            return z0_hat

    msm_sample(den, op, sampler, 2, steps=5, w=2, generator=0, consistency=Free())
    free = free_states[-1].reshape(2, 2, 16, 16)
    resid = lambda z: float(((z - y) * test_mask).abs().sum())  # noqa: E731
    assert resid(z0) < 1e-3 * resid(free)


@pytest.mark.parametrize("kw", [dict(w=0), dict(steps=0), dict(num_samples=0), dict(eta=1.5)])
def test_bad_arguments_are_user_errors(kw):
    den, op, sampler = _tiny_setup()
    args = dict(num_samples=1, steps=2, w=1)
    args.update(kw)
    with pytest.raises(MrimsmError):
        msm_sample(den, op, sampler, **args)


def test_natural_images_through_identity():
    torch.manual_seed(0)
    net = UNet(3, 3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), num_head_channels=16, image_size=8)
    den = MSMDenoiser(net, SCH)

    class Pixels:
        def draw(self, n, rng, device="cpu"):
            return torch.as_tensor(rng.random((n, 1, 8, 8)) < 0.4, dtype=torch.float32)

    x = msm_sample(den, Identity(), Pixels(), 2, steps=3, w=1, generator=0, image_shape=(3, 8, 8))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    with pytest.raises(ValueError):
        msm_sample(den, Identity(), Pixels(), 2, steps=3)  # Identity has no image_shape


@pytest.mark.slow
def test_block_gaussian_matches_sigma_at_200_steps():
    # the paper's 200 steps: discretisation error small, samples vs Sigma itself
    sigma_z = _row_block_sigma()
    n = 4000
    mean, cov = _sample_identity(sigma_z, RowMasks(0.5), n, 200, 3)
    disc = rel(ideal_covariance(sigma_z, RowMasks(1.0).family(), 200), sigma_z)
    sd = sampling_sd(sigma_z, n)
    print(f"200 steps, w=3: vs Sigma {rel(cov, sigma_z):.4f} (discretisation {disc:.4f}, sampling sd {sd:.4f})")
    assert rel(cov, sigma_z) < disc + 1.5 * sd
    assert (mean.abs() < 4 * torch.sqrt(sigma_z.diagonal() / n)).all()
