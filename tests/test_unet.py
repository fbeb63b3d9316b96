"""UNet backbone and the complex <-> channels adapter."""

import pytest
import torch

from mrimsm.models.channels import from_channels, num_channels, to_channels
from mrimsm.models.unet import UNet, timestep_embedding


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def _tiny(**kw):
    args = dict(in_channels=2, out_channels=2, model_channels=32, channel_mult=(1, 2, 2),
                num_res_blocks=1, attention_resolutions=(16,), num_head_channels=32, image_size=64)
    args.update(kw)
    return UNet(**args)


def _unzero(net: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers small random weights (so outputs depend on inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_channels_roundtrip_and_layout():
    x = torch.randn(3, 8, 6, dtype=torch.complex64)
    h = to_channels(x)
    assert h.shape == (3, 2, 8, 6) and h.dtype == torch.float32
    assert torch.equal(h[:, 0], x.real) and torch.equal(h[:, 1], x.imag)
    assert torch.equal(from_channels(h, like=x), x)
    xk = torch.randn(2, 3, 4, 4, dtype=torch.complex64)
    hk = to_channels(xk)
    assert hk.shape == (2, 6, 4, 4) and torch.equal(hk[:, 2], xk[:, 1].real) and torch.equal(hk[:, 5], xk[:, 2].imag)
    assert torch.equal(from_channels(hk, like=xk), xk)
    r = torch.randn(2, 3, 4, 4)
    assert to_channels(r) is r and torch.equal(from_channels(r, like=r), r)
    assert num_channels(x) == 2 and num_channels(xk) == 6 and num_channels(r) == 3
    with pytest.raises(ValueError):
        to_channels(torch.randn(4, 4, dtype=torch.complex64))


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0.0, 10.0, 999.0]), 32)
    assert e.shape == (3, 32)
    assert torch.allclose(e[0, :16], torch.ones(16)) and torch.allclose(e[0, 16:], torch.zeros(16))
    assert not torch.allclose(e[1], e[2])
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_fresh_unet_outputs_zero_and_has_right_shape():
    net = _tiny()
    x = torch.randn(2, 2, 64, 64)
    out = net(x, torch.tensor([3.0, 500.0]))
    assert out.shape == (2, 2, 64, 64) and out.dtype == torch.float32
    assert out.abs().max() == 0  # zero-initialised output conv


def test_unet_depends_on_input_and_time_and_all_params_learn():
    torch.manual_seed(0)
    net = _tiny()
    _unzero(net)
    x = torch.randn(2, 2, 64, 64)
    t = torch.tensor([10.0, 10.0])
    out = net(x, t)
    assert out.abs().max() > 0
    assert not torch.allclose(out, net(x, torch.tensor([900.0, 900.0])))  # time conditioning
    assert not torch.allclose(out, net(2 * x, t))  # input matters
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_batch_elements_do_not_interact():
    torch.manual_seed(1)
    net = _tiny()
    _unzero(net)
    x = torch.randn(3, 2, 64, 64)
    t = torch.tensor([1.0, 200.0, 700.0])
    full = net(x, t)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    assert torch.allclose(full, single, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(resblock_updown=False),
        dict(use_scale_shift_norm=False),
        dict(num_res_blocks=2, attention_resolutions=(32, 16, 8), channel_mult=(1, 2, 2, 2), dropout=0.1),
        dict(in_channels=3, out_channels=3, num_head_channels=16),
    ],
)
def test_unet_variants(kw):
    net = _tiny(**kw)
    _unzero(net)
    cin = net.in_channels
    out = net(torch.randn(2, cin, 64, 64), torch.tensor([0.0, 999.0]))
    assert out.shape == (2, net.out_channels, 64, 64) and torch.isfinite(out).all()


def test_unet_rejects_bad_sizes():
    net = _tiny()
    with pytest.raises(ValueError):
        net(torch.randn(1, 2, 62, 62), torch.zeros(1))
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 64, 64), torch.zeros(1))
    # other sizes divisible by 4 are fine (attention placement follows image_size)
    assert net(torch.randn(1, 2, 32, 48), torch.zeros(1)).shape == (1, 2, 32, 48)
