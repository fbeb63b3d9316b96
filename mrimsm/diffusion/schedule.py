"""The variance-preserving noise schedule, in the units MSM needs.

Forward process on a measurement ``y`` (docs/method.md section 3)::

    y_t = sqrt(abar_t) * (y + sigma_t * n),   sigma_t = sqrt((1 - abar_t) / abar_t)

with ``n`` standard normal **per real component** (a complex entry carries
variance 2 in total), the same convention as the measurement noise ``rho``.
``sigma_t`` is the noise level in measurement units, so it can be compared
with ``rho`` directly: with the default linear schedule ``sigma_0 ~ 0.010``,
``sigma_25 ~ 0.095``, ``sigma_26 ~ 0.099``, ``sigma_999 ~ 157``.

Steps are indexed ``t = 0 .. num_steps - 1`` with
``abar_t = prod_{s <= t} (1 - beta_s)``; "clean" (``abar = 1``) is the virtual
step ``-1``. Training and sampling use a respaced subset of the steps
(:meth:`VPSchedule.respaced`); the network always receives the original step
index ``t``, whatever the spacing.

Example::

    >>> sch = VPSchedule()
    >>> ts = sch.respaced(200)            # tensor([0, 5, 10, ..., 994, 999])
    >>> sch.sigma(ts[:3])                 # tensor([0.0100, 0.0300, 0.0469], dtype=float64)
    >>> sch.t_for_sigma(0.1, ts)          # 25 (largest respaced step with sigma <= 0.1)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["VPSchedule"]


class VPSchedule:
    """Linear-beta variance-preserving schedule (DDPM), 1000 steps by default.

    Args:
        num_steps: number of diffusion steps ``T``.
        beta_start, beta_end: the linear beta range.

    Attributes (float64 CPU tensors of shape ``(T,)``): ``betas``,
    ``alpha_bars``, ``sigmas``.

    All lookups take integer steps (Python int or int64 tensor, any shape and
    device) and return float64 tensors of the same shape on the same device;
    step ``-1`` means clean (``abar = 1``, ``sigma = 0``). Cast to float32
    before multiplying complex64 data (float64 would promote it to complex128).
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.num_steps = int(num_steps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        self.alpha_bars = torch.cumprod(1.0 - self.betas, dim=0)
        self.sigmas = torch.sqrt((1.0 - self.alpha_bars) / self.alpha_bars)
        # index 0 of the padded tables is the clean "step -1"
        self._abar_pad = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars])
        self._sigma_pad = torch.cat([torch.zeros(1, dtype=torch.float64), self.sigmas])

    def __repr__(self) -> str:
        return f"VPSchedule(num_steps={self.num_steps}, beta_start={self.beta_start}, beta_end={self.beta_end})"

    # -- lookups --------------------------------------------------------------
    def _lookup(self, table: torch.Tensor, t) -> torch.Tensor:
        t_t = torch.as_tensor(t)
        if t_t.is_floating_point() or t_t.is_complex():
            raise TypeError("steps must be integers (int or int64 tensor)")
        idx = t_t.to("cpu", torch.int64)
        if bool(((idx < -1) | (idx >= self.num_steps)).any()):
            raise IndexError(f"step out of range [-1, {self.num_steps - 1}]")
        return table[idx + 1].to(t_t.device)

    def alpha_bar(self, t) -> torch.Tensor:
        """``abar_t`` (float64, shape of ``t``); ``abar_{-1} = 1``."""
        return self._lookup(self._abar_pad, t)

    def sigma(self, t) -> torch.Tensor:
        """``sigma_t = sqrt((1 - abar_t) / abar_t)`` in measurement units (float64)."""
        return self._lookup(self._sigma_pad, t)

    # -- respacing ------------------------------------------------------------
    def respaced(self, n: int) -> torch.Tensor:
        """``n`` steps spread evenly over ``0 .. T-1``, both ends included.

        Returns ``(n,)`` int64 ascending original step indices,
        ``round(linspace(0, T - 1, n))``: for ``T = 1000, n = 200`` that is
        ``0, 5, 10, ..., 994, 999`` (every ~5th step, as the authors' 200-step
        setting). ``n = T`` gives every step. Consecutive entries are the
        ``t -> t - 1`` pairs of the respaced chain (the step after the first
        one is clean, ``-1``).
        """
        n = int(n)
        if not 1 <= n <= self.num_steps:
            raise ValueError(f"respaced steps must be in [1, {self.num_steps}], got {n}")
        if n == 1:
            return torch.tensor([self.num_steps - 1], dtype=torch.int64)
        ts = torch.round(torch.linspace(0, self.num_steps - 1, n, dtype=torch.float64)).to(torch.int64)
        return torch.unique(ts)  # sorted; unique is a no-op for n <= T

    def t_for_sigma(self, rho: float, steps: Optional[Sequence[int] | torch.Tensor] = None) -> int:
        """The step whose noise level is closest to ``rho`` **from below**.

        Returns the largest step ``t`` (among ``steps``, default all steps) with
        ``sigma_t <= rho``: the network is then told at most the noise actually
        present, never more, and ``t_rho`` falls in the loss's ``sigma_t <= rho``
        case. If every candidate has ``sigma_t > rho`` (``rho`` below ``sigma_0``)
        the smallest candidate is returned. Pass ``steps=schedule.respaced(n)``
        so that ``t_rho`` is a step the network is trained on.
        """
        cand = torch.arange(self.num_steps) if steps is None else torch.as_tensor(steps).to("cpu", torch.int64)
        if cand.numel() == 0:
            raise ValueError("no candidate steps")
        cand = torch.sort(cand).values
        below = cand[self.sigmas[cand] <= float(rho)]
        return int(below[-1]) if below.numel() else int(cand[0])
