"""Classical reconstructions: zero-filled (``A^H y``), CG-SENSE and L1-wavelet compressed sensing.

Both take a batch of slices of masked multi-coil k-space with their coil maps
and return coil-combined complex images.

* :func:`zero_filled` is ``A^H y = sum_c conj(C_c) F^H (M y_c)`` through
  :class:`mrimsm.physics.MultiCoilMRI`.
* :func:`sense` is parallel imaging without a prior: ``(A^H A + lamda I) x = A^H y``
  (Tikhonov-regularized SENSE) by conjugate gradients on the same operator.
* :func:`cs_l1_wavelet` solves, for every slice,
  ``min_x 1/2 ||M F C x - y||^2 + lamda ||Psi x||_1`` (``Psi``: Daubechies-4
  wavelet), the problem of ``sigpy.mri.app.L1WaveletRecon``, with FISTA.
  By default the whole batch is solved at once: the operator and the wavelet
  act on ``(S, H, W)`` along the last two axes, so the separable objective is
  solved for all slices in one sigpy ``LinearLeastSquares`` app (one FFT per
  iteration for the batch instead of one per slice). ``batched=False`` runs
  ``L1WaveletRecon`` itself slice by slice; both give the same images (tested).

The FISTA step size is ``1 / max_pixel sum_c |C_c|^2``, an upper bound on
``||A^H A||`` computed from the maps, instead of sigpy's randomly started
power iteration, so the result is deterministic.

``lamda`` is absolute (in image-intensity units): scale the data so that the
image magnitude is about 1 before calling (the recon pipeline does it for
``cs``: :data:`DEFAULT_LAMBDA` was tuned on max-normalized images).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from mrimsm.physics.operators import MultiCoilMRI
from mrimsm.solver_settings import CSSettings, SenseSettings

__all__ = [
    "zero_filled", "sense", "cs_l1_wavelet", "DEFAULT_LAMBDA", "DEFAULT_ITERS", "SENSE_LAMBDA", "SENSE_ITERS",
]

#: L1 weight for images normalized to max |A^H y| = 1 (what the recon pipeline feeds ``cs``).
#: Tuned once on simulated data (MNI152 training slices, never the held-out/sample ones):
#: 18 slices (3 orientations) at 64 x 64 with 16 coils and 9 slices at 128 x 128 with
#: 8 coils, readout oversampled, k-space noise 0.01, seeded RandomCartesian masks at
#: R = 4 and 6, ESPIRiT maps, the full ``mrimsm.recon`` pipeline; fastMRI-convention PSNR
#: over lamda in {1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2} x iterations in {10, ..., 300}
#: at 64 (at 128: lamda in {3e-4, 1e-3, 3e-3} x {30, 50, 100, 200}). lamda = 1e-3 with 50 iterations was best in all four settings
#: (PSNR 25.0 / 23.8 dB at 64 and 27.4 / 25.3 dB at 128 for R = 4 / 6, vs zero-filled
#: 22.0 / 21.6 and 23.6 / 22.2).
DEFAULT_LAMBDA = CSSettings.lamda  # the value: mrimsm.solver_settings.CSSettings
#: FISTA iterations. More is worse here: the fully converged L1 solution is 1.5 to 3 dB
#: below the 50-iteration one at every lamda tried (early stopping acts as extra
#: regularization at these accelerations), so the default stops at 50.
DEFAULT_ITERS = CSSettings.iters


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(dtype)


def _mask_4d(mask, num_slices: int) -> torch.Tensor:
    """``(W,)``, ``(S, W)``, ``(S, 1, 1, W)`` or ``(S, 1, H, W)`` -> 4-D float32."""
    m = _as_tensor(mask, torch.float32)
    if m.dim() == 1:
        m = m.view(1, 1, 1, -1)
    elif m.dim() == 2:
        m = m[:, None, None, :]
    if m.dim() != 4:
        raise ValueError(f"mask must be (W,), (S, W) or 4-D, got shape {tuple(m.shape)}")
    return m.expand(num_slices, *m.shape[1:]) if m.shape[0] == 1 else m


def zero_filled(kspace, mask, maps) -> torch.Tensor:
    """Zero-filled SENSE combination ``A^H y``.

    Args:
        kspace: ``(S, C, H, W)`` complex64 (torch or numpy), zero where not sampled.
        mask: ``(W,)``, ``(S, W)`` or ``(S, 1, 1, W)`` column mask (bool or float).
        maps: ``(S, C, H, W)`` complex64 coil maps.

    Returns:
        ``(S, H, W)`` complex64 torch tensor.
    """
    y = _as_tensor(kspace, torch.complex64)
    op = MultiCoilMRI(_as_tensor(maps, torch.complex64), _mask_4d(mask, y.shape[0]))
    return op.adjoint(y)


#: Tikhonov weight and CG iterations of :func:`sense` for images normalized to max |A^H y| ~ 1.
#: Tuned like CS's on MNI training-range slices only (``python -m benchmarks.sweep_solver --sense``).
SENSE_LAMBDA = SenseSettings.lamda  # the values: mrimsm.solver_settings.SenseSettings
SENSE_ITERS = SenseSettings.iters


def sense(kspace, mask, maps, lamda: float = SENSE_LAMBDA, max_iter: int = SENSE_ITERS) -> torch.Tensor:
    """CG-SENSE with Tikhonov regularization, batched over slices.

    Solves ``(A^H A + lamda I) x = A^H y`` with ``A = M F C`` (:class:`MultiCoilMRI`)
    by ``max_iter`` conjugate-gradient steps from zero (early stopping regularizes too).

    Args:
        kspace: ``(S, C, H, W)`` complex64 masked k-space (torch or numpy).
        mask: ``(W,)``, ``(S, W)`` or ``(S, 1, 1, W)`` column mask.
        maps: ``(S, C, H, W)`` complex64 coil maps.
        lamda: Tikhonov weight (absolute, image-intensity units squared).
        max_iter: CG iterations.

    Returns:
        ``(S, H, W)`` complex64 torch tensor.
    """
    from mrimsm.physics.solvers import conjugate_gradient

    y = _as_tensor(kspace, torch.complex64)
    op = MultiCoilMRI(_as_tensor(maps, torch.complex64).to(y.device), _mask_4d(mask, y.shape[0]).to(y.device))
    lam = float(lamda)
    return conjugate_gradient(lambda x: op.normal(x) + lam * x, op.adjoint(y), max_iter=int(max_iter))


def _step_size(maps: np.ndarray) -> float:
    peak = float(np.max(np.sum(np.abs(maps) ** 2, axis=-3)))
    return 1.0 / peak if peak > 0 else 1.0


def cs_l1_wavelet(
    kspace,
    mask,
    maps,
    lamda: float = DEFAULT_LAMBDA,
    max_iter: int = DEFAULT_ITERS,
    wave_name: str = "db4",
    batched: bool = True,
    on_slice: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """L1-wavelet compressed sensing (sigpy), batched over slices.

    Args:
        kspace: ``(S, C, H, W)`` complex64 masked k-space (torch or numpy).
        mask: ``(W,)``, ``(S, W)`` or ``(S, 1, 1, W)`` column mask.
        maps: ``(S, C, H, W)`` complex64 coil maps.
        lamda: L1 weight (absolute; see the module docstring).
        max_iter: FISTA iterations.
        wave_name: a pywavelets wavelet name.
        batched: solve all slices in one app (default) or run
            ``sigpy.mri.app.L1WaveletRecon`` slice by slice.
        on_slice: called with the number of slices just finished.

    Returns:
        ``(S, H, W)`` complex64 torch tensor.
    """
    import sigpy as sp
    import sigpy.mri as mr

    y = _as_tensor(kspace, torch.complex64)
    s, c, h, w = y.shape
    m = _mask_4d(mask, s).numpy().astype(np.complex64)
    y = y.numpy() * m
    mps = _as_tensor(maps, torch.complex64).numpy()
    if mps.shape != y.shape:
        raise ValueError(f"maps {mps.shape} and k-space {y.shape} differ in shape")
    alpha = _step_size(mps)

    if not batched:
        out = np.empty((s, h, w), dtype=np.complex64)
        for i in range(s):
            app = mr.app.L1WaveletRecon(
                y[i], mps[i], lamda, weights=m[i, 0].real, wave_name=wave_name,
                max_iter=max_iter, alpha=alpha, show_pbar=False,
            )
            out[i] = app.run()
            if on_slice is not None:
                on_slice(1)
        return torch.from_numpy(out)

    # A = M F C on a (S, H, W) batch: reshape -> maps -> centered 2-D FFT -> mask.
    img_shape = (s, h, w)
    lin = sp.linop
    A = (
        lin.Multiply(y.shape, m)
        * lin.FFT(y.shape, axes=(-2, -1), center=True)
        * lin.Multiply((s, 1, h, w), mps)
        * lin.Reshape((s, 1, h, w), img_shape)
    )
    W = lin.Wavelet(img_shape, axes=(-2, -1), wave_name=wave_name)
    proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, lamda), W)
    app = sp.app.LinearLeastSquares(
        A, y, proxg=proxg, max_iter=max_iter, alpha=alpha, show_pbar=False
    )
    out = np.asarray(app.run(), dtype=np.complex64)
    if on_slice is not None:
        on_slice(s)
    return torch.from_numpy(out)
