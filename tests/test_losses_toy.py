"""What the MSM losses learn, checked against closed forms on a Gaussian toy.

Data ``z ~ N(0, Sigma)`` in ``D = 8`` real dimensions with a correlated ``Sigma``;
each training example is one acquisition ``y = S (z + rho e)`` through its own
mask ``S`` (one of ``K`` fixed pixel patterns, :class:`Identity` with a mask),
never ``z``. For Gaussian data every MMSE denoiser of a masked measurement is
linear, so on the measured coordinates ``I`` of a mask::

    clean   E[S z       | S z       + sigma n] = Sigma_II (Sigma_II + sigma^2)^-1
    noisy   E[S(z + e)  | S(z + e)  + sigma n] = N (N + sigma^2)^-1,   N = Sigma_II + rho^2
    ref     E[y1 | y1 + sigma n],  y1 = clean(rho) y:  C1 (C1 + sigma^2)^-1,
            C1 = Sigma_II (Sigma_II + rho^2)^-1 Sigma_II (the covariance of y1)

The denoiser (:class:`GainTable`) holds one learnable matrix per (step, mask
pattern): exactly the capacity of those maps. It is told each example's
pattern (the real network sees the zero-filled view and no mask; reading the
pattern from the view's zeros is not reliable in float32, where a measured
entry comes out exactly 0 now and then: a float32 normal draw is 0 about once
in 10^7).

What the method promises, and what the tests check (errors are Frobenius
distances over all patterns, divided by the distance between the clean and the
noisy closed forms at that level):

* noisy loss, ``sigma_t > rho``: the partial step to level ``rho`` makes the clean
  posterior mean the minimiser;
* noisy loss, ``t_rho``: SURE trains the pseudo-clean reference to the clean posterior
  mean at level ``rho``;
* noisy loss, ``sigma_t < rho``: the loss re-noises the reference, so the minimiser is
  the denoiser of the reference's own distribution (``ref``), which is *not* the clean
  posterior mean (on this spectrum it is farther from it than the noisy one is);
* noiseless loss on the same noisy data: the noisy posterior mean at every level.

Broken variants must fail the clean checks where they should: without SURE (or
without its divergence term) the reference and the ``sigma_t <= rho`` levels are
wrong while ``sigma_t > rho`` stays clean (that branch never uses the reference);
a mis-stated ``rho`` (half the true one) makes ``sigma_t > rho`` mostly noisy.

``t`` is passed to the loss from a few chosen steps, not drawn from all 200:
``t_rho`` is never drawn as ``t``, so SURE alone trains it (in the 200-step
schedule it is drawn once in 200 examples while its SURE term is in every one).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrimsm.diffusion import losses
from mrimsm.diffusion.losses import MSMLoss
from mrimsm.diffusion.schedule import VPSchedule
from mrimsm.physics.operators import Identity

SCH = VPSchedule()
D, K = 8, 4
# respaced(200) steps: sigma 0.176, 0.308, 0.488, 0.864
T_LOW, T_RHO, T_MID, T_HIGH = 50, 90, 141, 231
RHO = float(SCH.sigma(T_RHO))  # exactly a training step's level, so t_rho = T_RHO
TRAIN_T = (T_LOW, T_MID, T_HIGH)
ITERS, BATCH, LR = 600, 1024, 0.03
PASS, FAIL = 0.3, 0.5  # normalized error: learnt that map / clearly did not


def _sigma_z() -> torch.Tensor:
    """(D, D) float64: squared-exponential correlation (length 1.5) + 0.05 I;
    eigenvalues 0.05 .. 3.4, so a noise variance rho^2 = 0.095 changes the MMSE maps a lot."""
    i = np.arange(D)
    return torch.tensor(np.exp(-((i[:, None] - i[None]) ** 2) / (2 * 1.5**2)) + 0.05 * np.eye(D))


def _patterns() -> torch.Tensor:
    """(K, D) float32 0/1: K fixed masks keeping 5 of the D coordinates each."""
    g = torch.Generator().manual_seed(0)
    pat = torch.zeros(K, D)
    for k in range(K):
        pat[k, torch.randperm(D, generator=g)[:5]] = 1
    return pat


SIGMA_Z, PATTERNS = _sigma_z(), _patterns()


class GainTable(torch.nn.Module):
    """``x0 = G[t, pattern] (u / sqrt(abar_t))``: one learnable ``(D, D)`` matrix per
    step of ``steps`` and mask pattern, all starting at ``0.5 I``.

    ``batch_patterns`` ``(B,)`` int64, set before each loss call, names each example's
    pattern; the loss's stacked calls ``(k * B, D)`` are stack-major, so example ``j``
    of the stack is batch example ``j % B``.
    """

    def __init__(self, steps: torch.Tensor, patterns: int = K, dim: int = D):
        super().__init__()
        self.gains = torch.nn.Parameter(0.5 * torch.eye(dim).repeat(len(steps), patterns, 1, 1))
        self.register_buffer("slot", torch.full((SCH.num_steps,), -1, dtype=torch.int64))
        self.slot[steps] = torch.arange(len(steps))
        self.register_buffer("scale", SCH.alpha_bar(torch.arange(SCH.num_steps)).rsqrt().float())
        self.batch_patterns = torch.zeros(1, dtype=torch.int64)

    def forward(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        slot = self.slot[t]
        if bool((slot < 0).any()):
            raise ValueError(f"steps without a gain: {t[slot < 0].unique().tolist()}")
        k = self.batch_patterns.repeat(u.shape[0] // len(self.batch_patterns))
        x = u * self.scale[t][:, None]
        return (self.gains[slot, k] @ x.unsqueeze(-1)).squeeze(-1)

    def gain(self, t: int, k: int) -> torch.Tensor:
        """The learnt ``(D, D)`` float64 matrix of step ``t`` and pattern ``k``."""
        return self.gains[int(self.slot[t]), k].detach().double()


def train(loss_fn: MSMLoss, rho_true: float = RHO, seed: int = 1) -> GainTable:
    """Adam on ``loss_fn`` with fresh acquisitions ``S (z + rho_true e)`` every step."""
    den = GainTable(SCH.respaced(200))
    opt = torch.optim.Adam(den.parameters(), lr=LR)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.01 ** (i / ITERS))
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(SIGMA_Z).float()
    steps = torch.tensor(TRAIN_T)
    for _ in range(ITERS):
        den.batch_patterns = torch.randint(K, (BATCH,), generator=g)
        mask = PATTERNS[den.batch_patterns]
        z = torch.randn(BATCH, D, generator=g) @ chol.T
        y = mask * (z + rho_true * torch.randn(BATCH, D, generator=g))
        t = steps[torch.randint(len(steps), (BATCH,), generator=g)]
        loss, _ = loss_fn(den, y, Identity(mask), g, t=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return den


def closed_form(sub: torch.Tensor, sigma: float, kind: str) -> torch.Tensor:
    """The MMSE map at level ``sigma`` for data covariance ``sub`` (module doc):
    ``kind`` = ``"clean"``, ``"noisy"`` or ``"ref"``."""
    eye = torch.eye(len(sub), dtype=sub.dtype)
    if kind == "noisy":
        sub = sub + RHO**2 * eye
    elif kind == "ref":
        sub = sub @ torch.linalg.solve(sub + RHO**2 * eye, sub)
    return sub @ torch.linalg.inv(sub + sigma**2 * eye)


def errors(den: GainTable, t: int) -> dict[str, float]:
    """Distance of the learnt maps at step ``t`` from each closed form, over all
    patterns, divided by the clean-to-noisy distance at that level."""
    sigma = float(SCH.sigma(t))
    sq = {"clean": 0.0, "noisy": 0.0, "ref": 0.0}
    scale = 0.0
    for k in range(K):
        idx = torch.nonzero(PATTERNS[k]).flatten()
        learnt = den.gain(t, k)[idx][:, idx]
        maps = {kind: closed_form(SIGMA_Z[idx][:, idx], sigma, kind) for kind in sq}
        scale += float((maps["noisy"] - maps["clean"]).norm() ** 2)
        for kind in sq:
            sq[kind] += float((learnt - maps[kind]).norm() ** 2)
    return {kind: (v / scale) ** 0.5 for kind, v in sq.items()}


def _all_errors(den: GainTable) -> dict[int, dict[str, float]]:
    out = {t: errors(den, t) for t in (T_LOW, T_RHO, T_MID, T_HIGH)}
    print({t: {k: round(v, 3) for k, v in e.items()} for t, e in out.items()})
    return out


def test_noisy_loss_learns_the_clean_posterior_mean():
    err = _all_errors(train(MSMLoss(SCH, rho=RHO)))
    for t in (T_RHO, T_MID, T_HIGH):
        assert err[t]["clean"] < PASS and err[t]["noisy"] > 1 - PASS, (t, err[t])
    # below rho the loss re-noises the reference: it learns the reference's denoiser
    assert err[T_LOW]["ref"] < PASS and err[T_LOW]["clean"] > 1, err[T_LOW]


def test_noiseless_loss_on_noisy_data_learns_the_noisy_posterior_mean():
    err = _all_errors(train(MSMLoss(SCH, rho=0.0)))
    for t in TRAIN_T:
        assert err[t]["noisy"] < PASS and err[t]["clean"] > 1 - PASS, (t, err[t])


def _sure_without_divergence(y, y1, y2, probe, rho, tau, m):
    """The SURE estimate with its divergence term dropped (minimised by ``y1 = y``)."""
    return (y1 - y).square().reshape(y.shape[0], -1).sum(1) / m - rho**2


@pytest.mark.parametrize("broken", ["no_sure", "no_divergence"])
def test_broken_sure_misses_the_clean_mean_at_and_below_rho_only(broken, monkeypatch):
    if broken == "no_divergence":
        monkeypatch.setattr(losses, "sure_estimate", _sure_without_divergence)
    err = _all_errors(train(MSMLoss(SCH, rho=RHO, lambda_sure=0.0 if broken == "no_sure" else 0.05)))
    assert err[T_RHO]["clean"] > FAIL, err[T_RHO]  # the reference is not the clean mean
    assert err[T_LOW]["ref"] > FAIL, err[T_LOW]  # so neither is what is trained on it
    for t in (T_MID, T_HIGH):  # sigma_t > rho never uses the reference
        assert err[t]["clean"] < PASS, (t, err[t])


def test_misstated_rho_misses_the_clean_mean_above_rho():
    err = _all_errors(train(MSMLoss(SCH, rho=RHO / 2), rho_true=RHO))
    for t in (T_MID, T_HIGH):
        assert err[t]["clean"] > FAIL and err[t]["noisy"] < err[t]["clean"], (t, err[t])
