"""MSM losses: SURE honesty, what the consistency terms are minimised by, gradients."""

import math

import pytest
import torch

from mrimsm.diffusion.denoiser import MSMDenoiser
from mrimsm.diffusion.losses import MSMLoss, gaussian_like, measured_dof, sure_estimate
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.models.unet import UNet
from mrimsm.physics.operators import Identity, MultiCoilMRI, PixelMask

SCH = VPSchedule()



class LinearDenoiser(torch.nn.Module):
    """x0 = a u + b roll(u): a simple linear (not diagonal) denoiser, independent of t."""

    def __init__(self, a=0.7, b=0.2):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, u, t):
        return self.a * u + self.b * torch.roll(u, shifts=1, dims=-1)


class SmoothDenoiser(torch.nn.Module):
    """A smooth nonlinear one (SURE holds for any weakly differentiable estimator)."""

    def forward(self, u, t):
        return 0.8 * torch.tanh(2.0 * u) + 0.1 * torch.roll(u, 1, dims=-2)


class ShrinkDenoiser(torch.nn.Module):
    """x0 = theta * u / sqrt(abar_t): linear shrinkage of the unscaled measurement view."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = theta

    def forward(self, u, t):
        scale = SCH.alpha_bar(t).sqrt().to(torch.float32).view(-1, *([1] * (u.dim() - 1)))
        return self.theta * u / scale


def _multicoil(batch, coils=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(1, coils, h, w, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    mask = (torch.rand(1, 1, 1, w, generator=g) < 0.5).float()
    mask[..., w // 2 - 1 : w // 2 + 1] = 1
    x = torch.randn(1, h, w, dtype=torch.complex64, generator=g)
    return MultiCoilMRI(maps, mask), x


def _sure_check(loss_fn, denoiser, op, clean, batch, seed):
    """Mean SURE vs the true MSE ||y1 - S z||^2 / m over `batch` independent draws."""
    g = torch.Generator().manual_seed(seed)
    clean = clean.expand(batch, *clean.shape[1:])
    y = clean + loss_fn.rho * op.apply_mask(gaussian_like(clean, g))
    with torch.no_grad():
        sure, y1 = loss_fn.sure(denoiser, y, op, g)
    m = measured_dof(op, y)
    true = (y1 - clean).abs().square().reshape(batch, -1).sum(1) / m
    diff = sure - true
    se = diff.std() / math.sqrt(batch)
    naive = (y1 - y).abs().square().reshape(batch, -1).sum(1) / m - loss_fn.rho**2  # no divergence term
    return float(sure.mean()), float(true.mean()), float(diff.mean()), float(se), float((naive - true).mean())


@pytest.mark.parametrize("denoiser", [LinearDenoiser(), SmoothDenoiser()], ids=["linear", "smooth"])
def test_sure_is_honest_on_real_pixel_masks(denoiser):
    # natural-image setting: T = I, Bernoulli pixel mask, real data, rho per pixel
    g = torch.Generator().manual_seed(1)
    clean_img = torch.rand(1, 3, 16, 16, generator=g)
    mask = (torch.rand(1, 1, 16, 16, generator=g) < 0.4).float()
    op = PixelMask(mask)
    loss_fn = MSMLoss(SCH, rho=0.1)
    mean_sure, mean_true, bias, se, naive_bias = _sure_check(loss_fn, denoiser, op, op(clean_img), 4000, 2)
    print(f"real: SURE {mean_sure:.6f} true {mean_true:.6f} diff {bias:.2e} se {se:.2e} naive {naive_bias:.2e}")
    assert abs(bias) < 3 * se
    # the check has power: dropping the divergence term is off by many standard errors
    assert abs(naive_bias) > 10 * se


def test_sure_is_honest_on_complex_multicoil_kspace():
    # MRI setting: complex k-space, rho per real component, m counts real dof
    op, x = _multicoil(1)
    loss_fn = MSMLoss(SCH, rho=0.1)
    mean_sure, mean_true, bias, se, naive_bias = _sure_check(loss_fn, LinearDenoiser(), op, op(x), 4000, 3)
    print(f"complex: SURE {mean_sure:.6f} true {mean_true:.6f} diff {bias:.2e} se {se:.2e} naive {naive_bias:.2e}")
    assert abs(bias) < 3 * se
    assert abs(naive_bias) > 10 * se


def test_sure_estimate_formula_on_a_hand_example():
    y = torch.tensor([[1.0, 2.0]])
    y1 = torch.tensor([[0.5, 1.5]])
    y2 = torch.tensor([[0.6, 1.5]])
    probe = torch.tensor([[1.0, -1.0]])
    m = torch.tensor([2.0])
    # ||y1 - y||^2 / m = 0.25; div = <probe, y2 - y1> / (tau m) = 0.1 / (0.1 * 2) = 0.5
    out = sure_estimate(y, y1, y2, probe, rho=0.5, tau=0.1, m=m)
    assert torch.allclose(out, torch.tensor([0.25 - 0.25 + 2 * 0.25 * 0.5]))


def test_measured_dof_counts_real_degrees_of_freedom():
    op, _ = _multicoil(1, coils=3, h=4, w=8)
    y = torch.zeros(2, 3, 4, 8, dtype=torch.complex64)
    cols = int(op.mask.sum())
    assert measured_dof(op, y).tolist() == [2.0 * 3 * 4 * cols] * 2
    pm = PixelMask(torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]))
    assert measured_dof(pm, torch.zeros(1, 3, 2, 2)).tolist() == [9.0]
    assert measured_dof(Identity(), torch.zeros(1, 3, 2, 2)).tolist() == [12.0]


def test_noiseless_loss_is_zero_for_the_oracle_and_ignores_unmeasured_entries():
    op, x = _multicoil(2)
    y = op(x).expand(2, -1, -1, -1).clone()

    class Oracle(torch.nn.Module):
        def forward(self, u, t):
            return x.expand(u.shape[0], -1, -1)

    loss_fn = MSMLoss(SCH, rho=0.0)
    loss, logs = loss_fn(Oracle(), y, op, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10 and set(logs) == {"loss", "consistency", "t_mean"}

    class Zero(torch.nn.Module):
        def forward(self, u, t):
            return torch.zeros_like(u)

    loss0, _ = loss_fn(Zero(), y, op, torch.Generator().manual_seed(0))
    expected = (y.abs().square().sum() / measured_dof(op, y).sum()).item()
    assert abs(loss0.item() - expected) < 1e-5 * expected
    # junk outside the mask changes nothing
    junk = y + (1 - op.mask) * 100.0
    loss_junk, _ = loss_fn(Zero(), junk, op, torch.Generator().manual_seed(0))
    assert abs(loss_junk.item() - loss0.item()) < 1e-6 * expected


def _parabola_argmin(f, thetas=(0.0, 0.5, 1.0)):
    a, b, c = thetas
    fa, fb, fc = (f(th) for th in thetas)
    # vertex of the parabola through three points (the loss is exactly quadratic in theta)
    num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
    den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    return b - 0.5 * num / den


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_consistency_term_is_minimised_by_the_clean_denoiser(rho):
    # y = s + rho e with s ~ N(0, 1) iid; at level sigma_t the clean MMSE shrink of the
    # noisy view is 1 / (1 + sigma_t^2). Regressing on the noisy data directly would give
    # (1 + rho^2) / (1 + sigma_t^2) instead; the partial step to level rho removes that bias.
    g = torch.Generator().manual_seed(5)
    s = torch.randn(64, 1, 32, 32, generator=g)
    mask = (torch.rand(64, 1, 32, 32, generator=g) < 0.5).float()
    op = PixelMask(mask)
    y = op(s + rho * torch.randn(s.shape, generator=g))
    t = torch.full((64,), 200, dtype=torch.int64)
    sigma = float(SCH.sigma(200))
    loss_fn = MSMLoss(SCH, rho=rho, lambda_sure=0.0)

    def loss_at(theta):
        return loss_fn(ShrinkDenoiser(theta), y, op, torch.Generator().manual_seed(9), t=t)[0].item()

    theta_star = _parabola_argmin(loss_at)
    clean = 1.0 / (1.0 + sigma**2)
    print(f"rho={rho} sigma_t={sigma:.3f}: argmin {theta_star:.4f} clean {clean:.4f} noisy {(1 + rho**2) * clean:.4f}")
    assert abs(theta_star - clean) < 0.02
    if rho > 0:
        assert abs(theta_star - (1 + rho**2) * clean) > 0.05


def _tiny_denoiser(seed=0):
    torch.manual_seed(seed)
    net = UNet(2, 2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), num_head_channels=16, image_size=16)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)
    return MSMDenoiser(net, SCH)


@pytest.mark.parametrize("rho,t", [(0.0, None), (0.1, [500, 300]), (0.1, [0, 5])])
def test_loss_backpropagates_to_the_network_and_is_seeded(rho, t):
    den = _tiny_denoiser()
    op, x = _multicoil(2, coils=2, h=16, w=16)
    y = op(x).expand(2, -1, -1, -1).clone()
    loss_fn = MSMLoss(SCH, rho=rho)
    t = None if t is None else torch.tensor(t)
    loss, logs = loss_fn(den, y, op, torch.Generator().manual_seed(3), t=t)
    loss.backward()
    grads = [p.grad for p in den.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    again, _ = loss_fn(den, y, op, torch.Generator().manual_seed(3), t=t)
    assert again.item() == loss.item()
    other, _ = loss_fn(den, y, op, torch.Generator().manual_seed(4), t=t)
    assert other.item() != loss.item()
    if rho > 0:
        assert {"sure", "low_noise_fraction"} <= set(logs)
        assert logs["low_noise_fraction"] == (1.0 if t is not None and max(t.tolist()) <= 25 else 0.0)


def test_pseudo_clean_reference_is_detached_unless_asked():
    op, x = _multicoil(2)
    y = op(x).expand(2, -1, -1, -1).clone()
    t_low = torch.tensor([0, 5])

    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.tensor(0.8))

        def forward(self, u, t):
            return self.theta * u

    grads = []
    for reference_grad in (False, True):
        den = Scalar()
        loss_fn = MSMLoss(SCH, rho=0.1, lambda_sure=0.0, reference_grad=reference_grad)
        loss, logs = loss_fn(den, y, op, torch.Generator().manual_seed(0), t=t_low)
        assert logs["low_noise_fraction"] == 1.0
        loss.backward()
        grads.append(float(den.theta.grad))
    assert grads[0] != pytest.approx(grads[1], rel=1e-3)


def test_loss_validates_arguments():
    with pytest.raises(ValueError):
        MSMLoss(SCH, rho=-0.1)
    with pytest.raises(ValueError):
        MSMLoss(SCH, weighting="nope")
    assert MSMLoss(SCH, rho=0.1).t_rho == 25
    lf = MSMLoss(SCH, weighting="snr")
    assert torch.allclose(lf.weight(torch.tensor([0])), 1 / SCH.sigma(torch.tensor([0])) ** 2)


class _FixedSigmas:
    """A schedule stub whose steps 0, 1, 2 have the given sigmas (measurement units)."""

    def __init__(self, sigmas):
        self._s = torch.tensor(sigmas, dtype=torch.float64)

    def sigma(self, t):
        return self._s[torch.as_tensor(t)]

    def respaced(self, n):
        return torch.arange(len(self._s))


def test_edm_weighting_formula():
    # w(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, by hand for sigma_data = 0.5:
    # sigma = 0.5 -> 0.5 / 0.0625 = 8; sigma = 0.1 -> 0.26 / 0.0025 = 104; sigma = 2 -> 4.25 / 1 = 4.25
    lf = MSMLoss(_FixedSigmas([0.5, 0.1, 2.0]), weighting="edm", sigma_data=0.5, train_steps=3)
    torch.testing.assert_close(lf.weight(torch.tensor([0, 1, 2])), torch.tensor([8.0, 104.0, 4.25], dtype=torch.float64))
    # another sigma_data: sigma = 0.5, sigma_data = 1 -> 1.25 / 0.25 = 5
    lf1 = MSMLoss(_FixedSigmas([0.5]), weighting="edm", sigma_data=1.0, train_steps=1)
    assert lf1.weight(torch.tensor([0])).item() == pytest.approx(5.0)
    # on the real schedule it is 1 / c_out^2 of the denoiser's preconditioning (unit-weight target)
    den = MSMDenoiser(LinearDenoiser(), SCH, sigma_data=0.5)
    t = torch.tensor([0, 10, 200, 999])
    lf2 = MSMLoss(SCH, weighting="edm", sigma_data=0.5)
    torch.testing.assert_close(lf2.weight(t), 1.0 / den.coefficients(t)["c_out"] ** 2)


def test_edm_weighting_is_applied_per_example():
    """The loss is w(t) times the unweighted consistency term, example by example."""
    op, x = _multicoil(1, coils=3, seed=5)
    y = op(x)
    edm = MSMLoss(SCH, weighting="edm", sigma_data=0.5)
    uni = MSMLoss(SCH, weighting="uniform")
    for t in (0, 300, 999):
        tt = torch.tensor([t])
        le, _ = edm(LinearDenoiser(), y, op, torch.Generator().manual_seed(1), t=tt)
        lu, _ = uni(LinearDenoiser(), y, op, torch.Generator().manual_seed(1), t=tt)
        assert le.item() == pytest.approx(edm.weight(tt).item() * lu.item(), rel=1e-5)


# -- the denoiser's scaling and preconditioning ----------------------------------------


class ConstBackbone(torch.nn.Module):
    """Returns a fixed value everywhere; records its input scale."""

    def __init__(self, value=0.3):
        super().__init__()
        self.value = value
        self.inputs = []

    def forward(self, h, t):
        self.inputs.append(h.detach())
        return torch.full_like(h, self.value)


def test_denoiser_divides_out_the_vp_factor_and_keeps_the_kind():
    den = MSMDenoiser(ConstBackbone(), SCH, sigma_data=0.5)
    v = torch.randn(3, 8, 8, dtype=torch.complex64)
    t = torch.tensor([0, 300, 999])
    abar = SCH.alpha_bar(t).to(torch.float32).view(-1, 1, 1)
    sigma = SCH.sigma(t).to(torch.float32).view(-1, 1, 1)
    x0 = den(abar.sqrt() * v, t)  # u_t = sqrt(abar) v
    assert x0.shape == v.shape and x0.dtype == torch.complex64
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / torch.sqrt(sigma**2 + 0.25)
    expected = c_skip * v + c_out * torch.complex(torch.tensor(0.3), torch.tensor(0.3))
    assert torch.allclose(x0, expected, atol=1e-5)
    # the backbone saw c_in * v as (B, 2, H, W) float32
    seen = den.backbone.inputs[-1]
    assert seen.shape == (3, 2, 8, 8) and seen.dtype == torch.float32
    assert torch.allclose(seen[:, 0], (v.real / torch.sqrt(sigma**2 + 0.25)), atol=1e-5)
    # real images stay real; eps prediction: x0 = x - sigma * F
    eps_den = MSMDenoiser(ConstBackbone(0.3), SCH, prediction="eps")
    r = torch.randn(2, 3, 8, 8)
    t2 = torch.tensor([10, 500])
    s2 = SCH.sigma(t2).to(torch.float32).view(-1, 1, 1, 1)
    a2 = SCH.alpha_bar(t2).to(torch.float32).view(-1, 1, 1, 1)
    out = eps_den(a2.sqrt() * r, t2)
    assert out.dtype == torch.float32 and torch.allclose(out, r - s2 * 0.3, atol=1e-5)
    with pytest.raises(ValueError):
        MSMDenoiser(ConstBackbone(), SCH, prediction="v")


def test_fresh_unet_denoiser_passes_the_input_through_at_low_noise():
    den = _tiny_denoiser()
    for p in den.backbone.out.parameters():
        torch.nn.init.zeros_(p)  # a fresh (zero-output) network
    u = torch.randn(2, 16, 16, dtype=torch.complex64)
    t = torch.tensor([0, 0])
    x0 = den(u, t)
    c_skip = 0.25 / (float(SCH.sigma(0)) ** 2 + 0.25)
    assert torch.allclose(x0, u / float(SCH.alpha_bar(0)) ** 0.5 * c_skip, atol=1e-5)


def test_denoiser_pads_sides_its_unet_cannot_halve_and_crops_back():
    """A 20 x 26 image on a UNet that halves twice (divisor 4): the backbone sees the image
    zero-padded about the centre to 20 x 28 and its output is cropped back, the same
    numbers as padding by hand; divisible sizes go through untouched."""
    torch.manual_seed(0)
    net = UNet(2, 2, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
               attention_resolutions=(), num_head_channels=16, image_size=16)
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.1)  # a network whose output depends on the input
    den = MSMDenoiser(net, SCH).eval()
    assert net.divisor == 4
    with pytest.raises(ValueError, match="not divisible"):
        net(torch.randn(1, 2, 20, 26), torch.tensor([3.0]))
    h = torch.randn(2, 2, 20, 26)
    t = torch.tensor([5.0, 40.0])
    with torch.no_grad():
        got = den._backbone_padded(h, t)
        want = net(torch.nn.functional.pad(h, (1, 1, 0, 0)), t)[..., 1:27]
        assert got.shape == h.shape and torch.equal(got, want)
        even = torch.randn(1, 2, 16, 16)
        assert torch.equal(den._backbone_padded(even, t[:1]), net(even, t[:1]))
        # the whole denoiser, complex in and out, at the odd size
        u = torch.randn(2, 20, 26, dtype=torch.complex64)
        x0 = den(u, torch.tensor([10, 100]))
    assert x0.shape == u.shape and x0.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(x0)).all()


# -- where the skip connection acts (diffusion.skip) ---------------------------------------


def test_projection_skip_passes_clean_data_through_and_image_skip_does_not():
    """With a zero backbone and ``sigma -> 0``, ``skip="projection"`` returns (up to
    ``c_skip``) the clean local measurement, which lies in the range of ``A_S``;
    ``skip="image"`` returns ``c_skip * A_S A_S^H v``, far from ``v`` for multi-coil
    MRI (the coil combination of an aliased image drops what the coils measured)."""
    op, x = _multicoil(2, coils=4, h=16, w=16, seed=1)
    v = op(x)[None]  # (1, 1, C, H, W): a clean local measurement, stack of 1
    t = torch.tensor([0])
    ab = float(SCH.alpha_bar(0))
    c_skip = 0.25 / (float(SCH.sigma(0)) ** 2 + 0.25)
    proj = MSMDenoiser(ConstBackbone(0.0), SCH, skip="projection", cg_iters=60)
    img = MSMDenoiser(ConstBackbone(0.0), SCH, skip="image")
    s_proj = proj.measure(op, ab**0.5 * v, t)
    s_img = img.measure(op, ab**0.5 * v, t)
    assert s_proj.shape == v.shape and s_proj.dtype == torch.complex64
    assert float((s_proj - c_skip * v).norm() / v.norm()) < 1e-3
    assert float((s_img - c_skip * v).norm() / v.norm()) > 0.1
    # noise outside the range of A_S is removed: the projection is closer to the clean data
    g = torch.Generator().manual_seed(5)
    noise = op.apply_mask(torch.randn(v.shape, dtype=torch.complex64, generator=g)) * 0.05
    s_noisy = proj.measure(op, ab**0.5 * (v + noise), t)
    assert (s_noisy / c_skip - v).norm() < 0.8 * noise.norm()
    with pytest.raises(ValueError):
        MSMDenoiser(ConstBackbone(), SCH, skip="measurement")
    with pytest.raises(ValueError):
        MSMDenoiser(ConstBackbone(), SCH, cg_iters=0)


def test_projection_skip_adds_the_backbone_in_the_image_domain():
    op, x = _multicoil(2, coils=3, h=8, w=8, seed=2)
    v = op(x)[None].expand(2, -1, -1, -1, -1).clone()  # (k=2, B=1, C, H, W)
    t = torch.tensor([300, 700])
    ab = SCH.alpha_bar(t).to(torch.float32)
    sig = SCH.sigma(t).to(torch.float32)
    y_t = v * ab.sqrt().view(2, 1, 1, 1, 1)
    from mrimsm.physics.solvers import conjugate_gradient

    x_ls = conjugate_gradient(op.normal, op.adjoint(v[0]), max_iter=8)  # (1, H, W)
    f = torch.full((1, 8, 8), complex(0.3, 0.3), dtype=torch.complex64)
    for prediction in ("x0", "eps"):
        den = MSMDenoiser(ConstBackbone(0.3), SCH, skip="projection", prediction=prediction)
        s = den.measure(op, y_t, t)
        for j in range(2):
            if prediction == "x0":
                c_skip = 0.25 / (sig[j] ** 2 + 0.25)
                c_out = sig[j] * 0.5 / torch.sqrt(sig[j] ** 2 + 0.25)
                expected = op(c_skip * x_ls + c_out * f)
            else:
                expected = op(x_ls - sig[j] * f)
            assert torch.allclose(s[j], expected, atol=1e-4)


def test_both_skips_agree_for_the_identity_operator_with_pixel_masks():
    """Natural images (T = I, pixel masks): A_S A_S^H v = v, so the choice is moot."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 3, 16, 16, generator=g) < 0.4).float()
    op = Identity(mask)
    v = op(torch.randn(2, 3, 16, 16, generator=g))[None]
    t = torch.tensor([40, 600])
    torch.manual_seed(0)
    net = UNet(3, 3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), num_head_channels=16, image_size=16)
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    a = MSMDenoiser(net, SCH, skip="image").measure(op, v, t)
    b = MSMDenoiser(net, SCH, skip="projection").measure(op, v, t)
    assert torch.allclose(a, b, atol=1e-5)


def test_inference_dtype_runs_only_the_network_in_bf16_and_only_in_eval():
    den = _tiny_denoiser()
    u = torch.randn(2, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([100, 700])
    den.eval()
    with torch.no_grad():
        ref = den(u, t)
        den.inference_dtype = torch.bfloat16
        low = den(u, t)
        assert low.dtype == torch.complex64
        rel = ((low - ref).norm() / ref.norm()).item()
        assert 0 < rel < 0.02, rel  # bf16 rounding inside the network, not another result
        den.train()  # training keeps the ambient precision
        torch.testing.assert_close(den(u, t), ref, rtol=1e-5, atol=1e-6)


def test_sampling_precision_choice(monkeypatch):
    from mrimsm.diffusion import denoiser as dn
    from mrimsm.errors import MrimsmError

    monkeypatch.setenv(dn.PRECISION_ENV, "fp32")
    assert dn.sampling_dtype("cpu") is None
    monkeypatch.setenv(dn.PRECISION_ENV, "bf16")
    assert dn.sampling_dtype("cpu", "Identity") is torch.bfloat16
    monkeypatch.setenv(dn.PRECISION_ENV, "auto")
    monkeypatch.setattr(dn, "cpu_has_native_bf16", lambda: True)
    assert dn.sampling_dtype("cpu") is torch.bfloat16
    assert dn.sampling_dtype("cpu", "Identity") is None  # the image prior: not measured, fp32
    assert dn.sampling_dtype("meta") is None  # not a CPU
    monkeypatch.setattr(dn, "cpu_has_native_bf16", lambda: False)
    assert dn.sampling_dtype("cpu") is None
    monkeypatch.setenv(dn.PRECISION_ENV, "half")
    with pytest.raises(MrimsmError, match="fp32, bf16 or auto"):
        dn.sampling_dtype("cpu")
