"""SSDU: self-supervised learning via data undersampling (Yaman et al., 2020).

The baseline MSM is compared against, trained on exactly the same undersampled,
noisy, reference-free data. Each training scan's acquired k-space ``y = M z +
noise`` is split into two disjoint parts of the acquisition mask ``M``:

* ``Theta`` -- what the network sees: input ``A_Theta^H y`` and the data-consistency
  blocks' operator ``A_Theta``;
* ``Lambda`` -- what the loss compares against: ``L = ||y_L - A_L x|| / ||y_L||
  + ||y_L - A_L x||_1 / ||y_L||_1`` with ``x = f(y_Theta, A_Theta)``.

Lambda takes ``loss_ratio`` (0.4) of the acquired coordinates, drawn with a
Gaussian density around the k-space centre (or uniformly); a small central
window always stays in Theta. A fresh split is drawn for every example at every
epoch, from a seed derived from ``(seed, epoch, example index)`` only, so runs
and resumed runs see the same splits. At test time the network gets all
acquired lines (``Theta = M``).

``granularity="lines"`` (default) splits whole acquired phase-encode columns,
``"points"`` splits the acquired 2-D k-space locations (what the original SSDU
code does on a 2-D mask); the operator takes either mask layout.

The operator is :class:`mrimsm.physics.operators.MultiCoilMRI`, the one MSM
uses; the network is :class:`mrimsm.models.unrolled.UnrolledNet`.

Entry points:

* ``mrimsm train --method ssdu configs/ssdu_tiny.yaml`` -- :class:`SSDUMethod`
  plugs into the shared loop of :mod:`mrimsm.train` (checkpoints, resume,
  progress, torchrun);
* ``mrimsm recon --method ssdu`` -- :class:`mrimsm.recon.ssdu.SSDURecon`;
* in Python: :func:`mrimsm.inference.load_ssdu` then ``loaded.reconstruct(y, maps, mask)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterable, Literal, Optional

import numpy as np
import torch
from annotated_types import Ge, Gt, Interval

from mrimsm import distributed
from mrimsm.assets import asset_path
from mrimsm.errors import MrimsmError
from mrimsm.models.unrolled import UnrolledNet
from mrimsm.physics.masks import ssdu_split
from mrimsm.physics.operators import MultiCoilMRI
from mrimsm.sections import Count, NonNegative, Seed
from mrimsm.settings import check, validate_dataclass
from mrimsm.trainmethod import TrainMethod

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = [
    "SSDUModelConfig",
    "SSDUSplitConfig",
    "build_unrolled",
    "split_seed",
    "split_example",
    "split_batch",
    "ssdu_kspace_loss",
    "ssdu_step_loss",
    "ssdu_reconstruct",
    "heldout_loss",
    "SSDUMethod",
    "LoadedSSDU",
    "DEFAULT_CHECKPOINT",
]


# -- settings -----------------------------------------------------------------------


@dataclass
class SSDUModelConfig:
    """The unrolled network, the ``model`` section of an ssdu config (defaults:
    the original SSDU sizes; see :class:`~mrimsm.models.unrolled.UnrolledNet`)."""

    num_unrolls: Count = 10
    num_blocks: NonNegative = 15
    channels: Count = 64
    res_scale: float = 0.1
    kernel_size: Count = 3
    mu_init: Annotated[float, Gt(0)] = 0.05
    cg_iters: Count = 10
    cg_tol: Annotated[float, Ge(0)] = 0.0
    grad_checkpoint: bool = False

    def validate(self) -> None:
        """The check the annotations cannot make (:class:`~mrimsm.settings.KeyProblem`)."""
        check(self.kernel_size % 2 == 1, "kernel_size", "must be odd")


@dataclass
class SSDUSplitConfig:
    """The Theta / Lambda split, the ``split`` section of an ssdu config (see
    :func:`mrimsm.physics.masks.ssdu_split`).

    ``center_size`` is the central window kept in Theta, in columns for
    ``"lines"`` and in pixels per side for ``"points"`` (SSDU keeps a 4 x 4
    block). ``seed`` is the base seed of every split; ``None`` in a config means
    the training seed (``train.seed``).
    """

    loss_ratio: Annotated[float, Interval(gt=0, lt=1)] = 0.4
    method: Literal["gaussian", "uniform"] = "gaussian"
    center_size: NonNegative = 4
    std_scale: Annotated[float, Gt(0)] = 4.0
    granularity: Literal["lines", "points"] = "lines"
    seed: Optional[Seed] = None


def build_unrolled(cfg: SSDUModelConfig | dict) -> UnrolledNet:
    """An :class:`UnrolledNet` from a model config (dataclass or plain dict)."""
    try:
        cfg = validate_dataclass(SSDUModelConfig, asdict(cfg) if isinstance(cfg, SSDUModelConfig) else cfg)
        cfg.validate()
    except ValueError as exc:  # SettingError, KeyProblem
        raise MrimsmError(f"bad ssdu model settings: {exc}") from None
    return UnrolledNet(**asdict(cfg))


# -- splitting ------------------------------------------------------------------------


def split_seed(seed: int, epoch: int, index: int) -> int:
    """The split seed of example ``index`` at ``epoch`` (a 32-bit int, stable across
    machines and NumPy versions)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


def split_example(
    mask: np.ndarray, split: SSDUSplitConfig, epoch: int, index: int, height: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Theta / Lambda for one example.

    Args:
        mask: the acquisition mask, ``(W,)`` bool (column mask) or ``(H, W)``.
        split: split settings (its ``seed`` is the run's base seed).
        epoch, index: epoch number and the example's dataset index.
        height: ``H``, needed to split a column mask point-wise.

    Returns:
        ``(theta, lam)`` bool arrays, ``(W,)`` for a line split of a column mask,
        ``(H, W)`` otherwise; disjoint, and their union is the acquisition mask.
    """
    m = np.asarray(mask).astype(bool)
    if split.granularity == "points" and m.ndim == 1:
        if height is None:
            raise ValueError("a point-wise split of a column mask needs the image height")
        m = np.broadcast_to(m, (int(height), m.size)).copy()
    center = int(split.center_size)
    return ssdu_split(
        m,
        loss_ratio=float(split.loss_ratio),
        method=split.method,
        center_size=center if m.ndim == 1 else (center, center),
        std_scale=float(split.std_scale),
        seed=split_seed(split.seed or 0, epoch, index),
    )


def _acq_mask_numpy(mask: torch.Tensor) -> np.ndarray:
    """Batch acquisition masks ``(B, 1, 1, W)`` or ``(B, 1, H, W)`` -> ``(B, W)`` or ``(B, H, W)`` bool."""
    m = mask.detach().to("cpu")
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, 1, W) or (B, 1, H, W), got {tuple(m.shape)}")
    m = m[:, 0, 0] if m.shape[2] == 1 else m[:, 0]
    return (m != 0).numpy()


def split_batch(
    mask: torch.Tensor, indices: Iterable[int], split: SSDUSplitConfig, epoch: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Theta and Lambda for a batch.

    Args:
        mask: acquisition masks ``(B, 1, 1, W)`` (or ``(B, 1, H, W)``) float/bool.
        indices: the examples' dataset indices (``B`` ints).
        split, epoch: as :func:`split_example`.
        height: image height ``H``.

    Returns:
        ``(theta, lam)`` float32 on ``mask``'s device, ``(B, 1, 1, W)`` for a line
        split of column masks, ``(B, 1, H, W)`` otherwise.
    """
    acq = _acq_mask_numpy(mask)
    indices = [int(i) for i in indices]
    if len(indices) != acq.shape[0]:
        raise ValueError(f"{len(indices)} indices for a batch of {acq.shape[0]}")
    pairs = [split_example(m, split, epoch, i, height) for m, i in zip(acq, indices)]
    theta = np.stack([p[0] for p in pairs])
    lam = np.stack([p[1] for p in pairs])

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(a, dtype=torch.float32, device=mask.device)
        return t[:, None, None, :] if t.dim() == 2 else t[:, None]

    return to_tensor(theta), to_tensor(lam)


# -- loss -----------------------------------------------------------------------------


def ssdu_kspace_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SSDU's normalised L1-L2 loss per example.

    ``||t - p||_2 / ||t||_2 + ||t - p||_1 / ||t||_1`` over all coordinates of
    each example, complex numbers counted as (real, imaginary) pairs (as the
    original code); ``pred``, ``target`` ``(B, C, H, W)`` complex64 (zero off
    Lambda) -> ``(B,)`` float32.
    """
    d = torch.view_as_real(pred - target).flatten(1)
    t = torch.view_as_real(target).flatten(1)
    l2 = d.norm(dim=1) / t.norm(dim=1).clamp_min(eps)
    l1 = d.abs().sum(1) / t.abs().sum(1).clamp_min(eps)
    return l2 + l1


def ssdu_step_loss(
    model: UnrolledNet,
    y: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor,
    indices: Iterable[int],
    split: SSDUSplitConfig,
    epoch: int,
) -> tuple[torch.Tensor, dict]:
    """The SSDU training loss of one batch.

    Args:
        y: acquired k-space ``(B, C, H, W)`` complex64 (zero off the mask).
        maps: ``(B, C, H, W)`` complex64.
        mask: acquisition masks ``(B, 1, 1, W)`` float32.
        indices, split, epoch: select the Theta / Lambda split (:func:`split_batch`).

    Returns:
        ``(loss, logs)``: the batch mean of :func:`ssdu_kspace_loss` (a scalar with
        gradient) and floats ``{"loss_l2", "loss_l1", "lambda_frac", "mu"}``.
        ``model`` may be wrapped in DDP.
    """
    theta, lam = split_batch(mask, indices, split, epoch, y.shape[-2])
    op_theta = MultiCoilMRI(maps, theta)
    op_lam = op_theta.with_mask(lam)
    x = model(op_theta.apply_mask(y), op_theta)
    y_lam = op_lam.apply_mask(y)
    pred = op_lam(x)
    per_example = ssdu_kspace_loss(pred, y_lam)
    with torch.no_grad():
        d = torch.view_as_real(pred - y_lam).flatten(1)
        t = torch.view_as_real(y_lam).flatten(1)
        logs = {
            "loss_l2": (d.norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)).mean().item(),
            "loss_l1": (d.abs().sum(1) / t.abs().sum(1).clamp_min(1e-12)).mean().item(),
            "lambda_frac": (lam.sum() / (theta.sum() + lam.sum())).item(),
            "mu": _mu_of(model),
        }
    return per_example.mean(), logs


# -- inference -----------------------------------------------------------------------


@torch.no_grad()
def ssdu_reconstruct(model: UnrolledNet, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reconstruct with every acquired line (Theta = the acquisition mask).

    ``y`` ``(B, C, H, W)`` complex64, ``maps`` ``(B, C, H, W)`` complex64, ``mask``
    broadcastable to ``(B, 1, H, W)`` (e.g. ``(B, 1, 1, W)`` or ``(1, 1, 1, W)``)
    -> images ``(B, H, W)`` complex64. The data should be scaled as in training
    (max |x| about 1).
    """
    op = MultiCoilMRI(maps, mask)
    return model(op.apply_mask(y), op)


@torch.no_grad()
def heldout_loss(
    model: UnrolledNet,
    batches: Iterable[dict],
    split: SSDUSplitConfig,
    epoch: int = 0,
) -> float:
    """Mean SSDU k-space loss on held-out batches with fixed splits (no reference needed).

    ``batches`` yields dicts with ``y``, ``maps``, ``mask`` and ``index`` as the
    training data does; the same ``(split.seed, epoch)`` gives the same splits, so
    numbers before and after training are comparable.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            theta, lam = split_batch(batch["mask"], _indices(batch), split, epoch, batch["y"].shape[-2])
            op_theta = MultiCoilMRI(batch["maps"], theta)
            op_lam = op_theta.with_mask(lam)
            x = model(op_theta.apply_mask(batch["y"]), op_theta)
            per = ssdu_kspace_loss(op_lam(x), op_lam.apply_mask(batch["y"]))
            total += per.sum().item()
            count += per.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise MrimsmError("no held-out examples to evaluate the ssdu loss on")
    return total / count


def _mu_of(model: torch.nn.Module) -> float:
    """The data-consistency weight of a (possibly DDP-wrapped) unrolled network, or NaN."""
    dc = getattr(distributed.unwrap(model), "dc", None)
    return float(dc.mu.detach()) if dc is not None else float("nan")


def _indices(batch: dict) -> list[int]:
    idx = batch.get("index")
    if idx is None:
        raise ValueError("ssdu needs each example's dataset index ('index') to draw its split")
    if isinstance(idx, torch.Tensor):
        return [int(i) for i in idx.reshape(-1).tolist()]
    if isinstance(idx, (int, np.integer)):
        return [int(idx)]
    return [int(i) for i in idx]


# -- the training method (plugged into mrimsm.train's loop) ----------------------------


class SSDUMethod(TrainMethod):
    """SSDU as a :class:`~mrimsm.train.TrainMethod`: ``mrimsm train --method ssdu CONFIG``.

    Config sections besides ``data`` / ``train`` / ``sample``: ``model``
    (:class:`SSDUModelConfig`) and ``split`` (:class:`SSDUSplitConfig`; its
    ``seed: null`` means ``train.seed``). The original SSDU trains with Adam at
    lr 5e-4, batch 1, no EMA and no gradient clipping (see ``configs/ssdu.yaml``).
    Each step splits every example's acquisition mask with the seed
    ``(split.seed, batch["epoch"], batch["index"])``.
    """

    config_sections = {"model": SSDUModelConfig, "split": SSDUSplitConfig}

    def __init__(self, cfg: Config, data_info: Optional[dict] = None):
        super().__init__(cfg, data_info)
        split = cfg.split
        self.split = split if split.seed is not None else replace(split, seed=int(cfg.train.seed))

    def build_model(self, cfg: Config) -> UnrolledNet:
        return build_unrolled(cfg.model)

    def loss(self, model, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        loss, logs = ssdu_step_loss(
            model, batch["y"], batch["maps"], batch["mask"], _indices(batch), self.split, int(batch.get("epoch", 0))
        )
        return loss, logs

    def preview(self, model, batch: Optional[dict], generator: torch.Generator) -> Optional[torch.Tensor]:
        """Zero-filled images, then SSDU's reconstructions (all acquired lines): ``(2N, H, W)`` complex64."""
        if batch is None:
            return None
        op = MultiCoilMRI(batch["maps"], batch["mask"])
        zero_filled = op.adjoint(op.apply_mask(batch["y"]))
        return torch.cat([zero_filled, ssdu_reconstruct(model, batch["y"], batch["maps"], batch["mask"])], 0)

    def checkpoint_meta(self, cfg: Config) -> dict:
        info = self.data_info
        example = info.get("example") or {}
        y = example.get("y")
        manifest = info.get("manifest") or {}
        return {
            "operator": "MultiCoilMRI",
            "image_shape": None if y is None else [int(s) for s in y.shape[-2:]],
            "num_coils": None if y is None else int(y.shape[0]),
            "rho": info.get("rho", manifest.get("rho")),
            "mask": manifest.get("mask"),
            "split": asdict(self.split),
            "data": self.data_meta(),
        }


# -- loading a trained checkpoint ------------------------------------------------------


@dataclass
class LoadedSSDU:
    """An SSDU checkpoint ready for inference: the network in eval mode, its config and meta."""

    model: UnrolledNet
    config: dict
    meta: dict
    step: int
    path: str

    def reconstruct(self, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`ssdu_reconstruct` with this network (inputs on the model's device)."""
        return ssdu_reconstruct(self.model, y, maps, mask)


#: The 64 x 64 SSDU checkpoint shipped with the package; the first of
#: ``mrimsm.diffusion.shipped.SHIPPED_SSDU``, which lists them all (a layer above: tested equal).
DEFAULT_CHECKPOINT = asset_path("default_ssdu.pt")
