"""SSDU unrolled network: CG solver, regulariser, data consistency, gradients."""

from __future__ import annotations

import pytest
import torch

from mrimsm.models.unrolled import (
    DataConsistencyCG,
    ResNetRegularizer,
    UnrolledNet,
    channels_to_complex,
    complex_to_channels,
    conjugate_gradient,
)
from mrimsm.physics.operators import MultiCoilMRI


def _random_maps(b: int, c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    maps = torch.randn(b, c, h, w, dtype=torch.complex64, generator=gen)
    return maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()  # sum_c |C_c|^2 = 1


def _random_problem(seed: int, b: int = 3, c: int = 4, h: int = 16, w: int = 20):
    gen = torch.Generator().manual_seed(seed)
    maps = _random_maps(b, c, h, w, gen)
    mask = (torch.rand(b, 1, 1, w, generator=gen) < 0.35).float()
    mask[..., w // 2 - 2 : w // 2 + 2] = 1
    rhs = torch.randn(b, h, w, dtype=torch.complex64, generator=gen)
    return MultiCoilMRI(maps, mask), rhs


def _rel_residual(op, mu, x, b) -> torch.Tensor:
    res = op.normal(x) + mu * x - b
    return res.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mu", [0.05, 1.0])
def test_cg_solves_normal_equations_to_tolerance(seed, mu):
    op, b = _random_problem(seed)
    before = _rel_residual(op, mu, torch.zeros_like(b), b)
    x = conjugate_gradient(lambda v: op.normal(v) + mu * v, b, max_iter=200, tol=1e-5)
    after = _rel_residual(op, mu, x, b)
    assert torch.all(before > 0.5)
    assert torch.all(after < 1e-4), after


def test_cg_matches_dense_solve():
    """Against a dense solve of the same system built column by column."""
    op, b = _random_problem(3, b=1, c=2, h=6, w=8)
    mu = 0.1
    n = 6 * 8
    eye = torch.eye(n, dtype=torch.complex64).reshape(n, 6, 8)
    cols = torch.stack([op.normal(e[None])[0].reshape(-1) + mu * e.reshape(-1) for e in eye], dim=1)
    x_dense = torch.linalg.solve(cols.to(torch.complex128), b.reshape(-1).to(torch.complex128))
    x_cg = conjugate_gradient(lambda v: op.normal(v) + mu * v, b, max_iter=300, tol=1e-7)
    err = (x_cg.reshape(-1).to(torch.complex128) - x_dense).norm() / x_dense.norm()
    assert err < 1e-4


def test_cg_fixed_iterations_reduce_residual_monotonically():
    op, b = _random_problem(4)
    mu = 0.05
    res = [
        _rel_residual(op, mu, conjugate_gradient(lambda v: op.normal(v) + mu * v, b, max_iter=k), b).max().item()
        for k in (1, 5, 10, 20)
    ]
    assert res[0] > res[1] > res[2] > res[3]


def test_cg_batch_items_are_independent():
    op, b = _random_problem(5)
    mu = 0.05
    x_all = conjugate_gradient(lambda v: op.normal(v) + mu * v, b, max_iter=7)
    op1 = MultiCoilMRI(op.maps[1:2], op.mask[1:2])
    x_one = conjugate_gradient(lambda v: op1.normal(v) + mu * v, b[1:2], max_iter=7)
    torch.testing.assert_close(x_all[1:2], x_one, rtol=1e-4, atol=1e-5)


def test_cg_is_differentiable():
    """Gradient of a CG output w.r.t. mu matches a finite difference."""
    op, b = _random_problem(6, b=1)
    mu = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b64 = b.to(torch.complex128)
    op64 = MultiCoilMRI(op.maps.to(torch.complex128), op.mask)

    def f(m):
        x = conjugate_gradient(lambda v: op64.normal(v) + m * v, b64, max_iter=60)
        return x.abs().pow(2).sum()

    f(mu).backward()
    eps = 1e-5
    fd = (f(mu.detach() + eps) - f(mu.detach() - eps)) / (2 * eps)
    assert torch.isclose(mu.grad, fd, rtol=1e-4)


def test_channels_round_trip():
    x = torch.randn(2, 5, 7, dtype=torch.complex64)
    ch = complex_to_channels(x)
    assert ch.shape == (2, 2, 5, 7) and ch.dtype == torch.float32
    torch.testing.assert_close(ch[:, 0], x.real)
    torch.testing.assert_close(channels_to_complex(ch), x)


def test_regularizer_shapes_and_size():
    reg = ResNetRegularizer(channels=8, num_blocks=3)
    x = torch.randn(2, 12, 16, dtype=torch.complex64)
    out = reg(x)
    assert out.shape == x.shape and out.dtype == torch.complex64
    full = ResNetRegularizer()  # SSDU: 15 blocks of 64 channels
    assert len(full.blocks) == 15 and full.head.out_channels == 64


def test_dc_block_solves_its_equation_and_mu_is_positive():
    op, z = _random_problem(7)
    gen = torch.Generator().manual_seed(8)
    aty = op.adjoint(op(torch.randn(z.shape, dtype=torch.complex64, generator=gen)))
    dc = DataConsistencyCG(mu_init=0.05, cg_iters=100, cg_tol=1e-6)
    assert abs(dc.mu.item() - 0.05) < 1e-6
    with torch.no_grad():
        dc.raw_mu.fill_(-30.0)
    assert dc.mu.item() > 0
    with torch.no_grad():
        dc.raw_mu.fill_(0.0)
        x = dc(z, aty, op)
    mu = dc.mu.item()
    rhs = aty + mu * z
    assert torch.all(_rel_residual(op, mu, x, rhs) < 1e-4)


def test_unrolled_net_forward_backward():
    torch.manual_seed(0)
    op, _ = _random_problem(9, b=2, h=16, w=16)
    gen = torch.Generator().manual_seed(10)
    y = op(torch.randn(2, 16, 16, dtype=torch.complex64, generator=gen))
    net = UnrolledNet(num_unrolls=3, num_blocks=2, channels=8, cg_iters=5)
    x = net(y, op)
    assert x.shape == (2, 16, 16) and x.dtype == torch.complex64
    x.abs().pow(2).mean().backward()
    assert net.dc.raw_mu.grad is not None and torch.isfinite(net.dc.raw_mu.grad)
    assert all(p.grad is not None for p in net.regularizer.parameters())


def test_gradient_checkpointing_gives_same_gradients():
    op, _ = _random_problem(11, b=1, h=16, w=16)
    y = op(torch.randn(1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(12)))
    torch.manual_seed(1)
    a = UnrolledNet(num_unrolls=2, num_blocks=1, channels=4, cg_iters=3)
    b = UnrolledNet(num_unrolls=2, num_blocks=1, channels=4, cg_iters=3, grad_checkpoint=True)
    b.load_state_dict(a.state_dict())
    for net in (a, b):
        net(y, op).abs().pow(2).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


def test_unrolled_net_keeps_measured_data_with_small_mu():
    """With mu -> 0 and enough CG iterations the output agrees with y on the mask."""
    op, _ = _random_problem(13, b=1, h=16, w=16)
    y = op(torch.randn(1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(14)))
    net = UnrolledNet(num_unrolls=1, num_blocks=1, channels=4, mu_init=1e-4, cg_iters=100, cg_tol=1e-7)
    with torch.no_grad():
        x = net(y, op)
    err = (op(x) - y).norm() / y.norm()
    assert err < 1e-2
