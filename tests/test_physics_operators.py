"""Operator checks (sigpy-style reusable checkers applied to every operator)."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy as sp
import sigpy.mri
import torch

from mrimsm.physics import BoxMask, Downsample, Identity, MultiCoilMRI, PixelMask, fft2c, ifft2c


def _rand(shape, complex_=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if complex_:
        return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return torch.randn(shape, generator=g)


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    return complex(torch.sum(a.conj() * b).item()) if a.is_complex() else float(torch.sum(a * b).item())


def check_adjoint(op, x, y, rtol=1e-5):
    lhs = _inner(op.forward(x), y)
    rhs = _inner(x, op.adjoint(y))
    assert abs(lhs - rhs) <= rtol * max(abs(lhs), abs(rhs), 1e-12), (lhs, rhs)


def check_linear(op, x1, x2):
    a, b = 0.7, -1.3
    lhs = op.forward(a * x1 + b * x2)
    rhs = a * op.forward(x1) + b * op.forward(x2)
    assert torch.allclose(lhs, rhs, atol=1e-4, rtol=1e-4)


def check_normal(op, x):
    assert torch.allclose(op.normal(x), op.adjoint(op.forward(x)), atol=1e-5)
    assert torch.allclose(op.H(op(x)), op.adjoint(op.forward(x)), atol=1e-5)


def _mri(shape=(2, 4, 16, 12), masked=True, seed=0):
    b, c, h, w = shape
    maps = _rand(shape, seed=seed)
    mask = (torch.rand(b, 1, 1, w, generator=torch.Generator().manual_seed(seed + 1)) < 0.5) if masked else None
    return MultiCoilMRI(maps, mask), (b, h, w), shape


OPERATORS = {
    "mri_even": lambda: _mri((2, 4, 16, 12)),
    "mri_odd": lambda: _mri((2, 3, 15, 13)),
    "mri_full": lambda: _mri((1, 5, 8, 8), masked=False),
    "mri_2d_mask": lambda: (
        MultiCoilMRI(_rand((2, 3, 8, 10)), torch.rand(2, 1, 8, 10) < 0.4),
        (2, 8, 10),
        (2, 3, 8, 10),
    ),
    "identity": lambda: (Identity(), (2, 3, 8, 8), (2, 3, 8, 8)),
    "pixel_mask": lambda: (PixelMask(torch.rand(2, 1, 8, 8) < 0.4), (2, 3, 8, 8), (2, 3, 8, 8)),
    "box_mask": lambda: (BoxMask((8, 8), (4, 4)), (2, 3, 8, 8), (2, 3, 8, 8)),
    "downsample": lambda: (Downsample(4), (2, 3, 16, 16), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_adjoint_linear_normal(name):
    op, xshape, yshape = OPERATORS[name]()
    cplx = name.startswith("mri")
    x1, x2 = _rand(xshape, cplx, 1), _rand(xshape, cplx, 2)
    y = _rand(yshape, cplx, 3)
    check_adjoint(op, x1, y)
    check_linear(op, x1, x2)
    check_normal(op, x1)


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 15, 17), (1, 4, 32, 20)])
def test_fft2c_matches_sigpy_and_inverts(shape):
    x = _rand(shape)
    ref = sp.fft(x.numpy(), axes=(-2, -1))
    np.testing.assert_allclose(fft2c(x).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(ifft2c(x).numpy(), sp.ifft(x.numpy(), axes=(-2, -1)), atol=1e-5)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-5)
    assert fft2c(x).dtype == torch.complex64


def test_fft2c_matches_fastmri():
    fastmri = pytest.importorskip("fastmri")
    x = _rand((2, 16, 12))
    ref = fastmri.fft2c(torch.view_as_real(x))
    assert torch.allclose(torch.view_as_real(fft2c(x)), ref, atol=1e-5)


@pytest.mark.parametrize("hw", [(16, 16), (15, 13)])
def test_multicoil_forward_matches_sigpy_sense(hw):
    h, w = hw
    maps = sigpy.mri.birdcage_maps((6, h, w)).astype(np.complex64)
    mask = (np.random.default_rng(0).random(w) < 0.5).astype(np.float32)
    x = _rand((1, h, w)).numpy()
    sense = sigpy.mri.linop.Sense(maps)
    ref = sense * x[0] * mask[None, None, :]
    op = MultiCoilMRI(torch.from_numpy(maps)[None], torch.from_numpy(mask).view(1, 1, 1, w))
    out = op.forward(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    back = op.adjoint(torch.from_numpy(ref[None].astype(np.complex64)))[0].numpy()
    np.testing.assert_allclose(back, sense.H * ref, atol=1e-5)


def test_with_mask_shares_maps_and_changes_mask():
    op, xshape, _ = _mri((1, 4, 8, 8))
    x = _rand(xshape)
    full = op.with_mask(None)
    m = torch.zeros(1, 1, 1, 8)
    m[..., 2:5] = 1
    sub = op.with_mask(m)
    assert torch.allclose(sub.forward(x), full.forward(x) * m, atol=1e-6)
    assert torch.allclose(full.full_forward(x), full.forward(x))
    assert sub.maps is op.maps


def test_downsample_forward_is_block_mean():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = Downsample(2)(x)
    assert torch.allclose(y, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    with pytest.raises(ValueError):
        Downsample(3)(x)


def test_box_mask_hides_the_box():
    op = BoxMask((8, 8), (4, 2))
    x = torch.ones(1, 3, 8, 8)
    assert op(x).sum() == 3 * (64 - 8)


@pytest.mark.parametrize("mask_shape", [(3, 1, 1, 16), (1, 1, 1, 16), (16,)])
def test_column_path_equals_the_full_fft(mask_shape):
    """A sparse column mask takes the kept-columns path; it equals fft2c with the mask applied,
    also with rows keeping different numbers of columns, a stacked leading dimension and autograd."""
    b, c, h, w = 3, 4, 12, 16
    maps = _rand((b, c, h, w), seed=4)
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand(mask_shape, generator=g) < 0.4).float()
    mask.view(-1, w)[0, :3] = 0.5  # a non-binary weight is carried too
    mask.view(-1, w)[:, 7] = 1.0  # every row keeps column 7
    op = MultiCoilMRI(maps, mask)
    assert op._cols is not None  # the path under test is taken
    assert op.with_mask(mask)._cols is not None
    m4 = mask.view(-1, 1, 1, w)
    x = _rand((2, b, h, w), seed=6).requires_grad_(True)  # (k, B, H, W)
    ref = fft2c(x.unsqueeze(-3) * maps) * m4
    y = op.forward(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    z = _rand((2, b, c, h, w), seed=7)
    torch.testing.assert_close(op.adjoint(z), (ifft2c(z * m4) * maps.conj()).sum(-3), atol=1e-5, rtol=1e-5)
    (gx,) = torch.autograd.grad(y.abs().square().sum(), x)
    (gr,) = torch.autograd.grad(ref.abs().square().sum(), x)
    torch.testing.assert_close(gx, gr, atol=1e-4, rtol=1e-4)
    check_adjoint(op, x.detach(), z)


def test_column_path_is_skipped_for_dense_and_2d_masks():
    maps = _rand((1, 2, 8, 8))
    assert MultiCoilMRI(maps, torch.ones(1, 1, 1, 8))._cols is None  # keeps every column
    assert MultiCoilMRI(maps, torch.rand(1, 1, 8, 8) < 0.3)._cols is None  # 2-D mask
    assert MultiCoilMRI(maps, None)._cols is None
    assert MultiCoilMRI(_rand((1, 2, 7, 8)), torch.rand(1, 1, 1, 8) < 0.3)._cols is None  # odd size


def test_column_path_broadcasts_masks_over_one_image():
    """More masks than images (one image, four masks): the same broadcast as the 2-D path."""
    maps = _rand((1, 3, 8, 12), seed=8)
    mask = (torch.rand(4, 1, 1, 12, generator=torch.Generator().manual_seed(9)) < 0.4).float()
    mask[..., 6] = 1
    op = MultiCoilMRI(maps, mask)
    full = MultiCoilMRI(maps, mask)
    full._cols = None
    assert op._cols is not None
    x, z = _rand((1, 8, 12), seed=10), _rand((1, 3, 8, 12), seed=11)
    torch.testing.assert_close(op.forward(x), full.forward(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.adjoint(z), full.adjoint(z), atol=1e-5, rtol=1e-5)
    assert op.forward(x).shape == (4, 3, 8, 12) and op.adjoint(z).shape == (4, 8, 12)
