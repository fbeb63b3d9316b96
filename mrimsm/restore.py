"""Image restoration with a natural-image MSM prior: box inpainting and 4x super-resolution.

The same posterior solver as CS-MRI (:func:`mrimsm.diffusion.posterior.posterior_sample`):
the prior's full measurement is the image itself (``Identity()``, ``T = I``), the
test operator ``H`` acts on it and ``y = H x + e`` is the observation:

============== ================================================ =========================
task           ``H``                                            observation ``y``
============== ================================================ =========================
``inpaint-box`` :class:`~mrimsm.physics.operators.BoxMask`: a    ``(K, H, W)``, the box blank
               centred box of half the side is missing (the
               authors' 128 box at 256)
``sr4``        :class:`~mrimsm.physics.operators.Downsample`    ``(K, H/4, W/4)``
               (4 x 4 average pooling)
============== ================================================ =========================

Data consistency replaces the observed pixels by ``y`` (box; ``dc_step = 1``) or
projects onto ``{Downsample(x) = y}`` (SR, through ``Downsample.pseudo_inverse``).
Simple baselines: the box filled with the mean of the observed pixels (per channel),
bicubic upsampling (``skimage.transform.resize(order=3)``).

Pixel values are in ``[-1, 1]`` throughout (the checkpoint's ``value_range``);
metrics are computed in ``[0, 1]`` with ``data_range = 1`` (PSNR; SSIM over the
colour image, 7 x 7 windows).

Example::

    >>> loaded = load_msm(default_image_checkpoint())
    >>> out = simulate_restoration(loaded, clean, "inpaint-box", image_settings(), seed=0)
    >>> out.metrics["msm"]["psnr"], out.metrics["mean-fill"]["psnr"]
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from mrimsm.assets import asset_path
from mrimsm.errors import MrimsmError
from mrimsm.limits import MEMORY_SHARE, check_finite, check_seed
from mrimsm.physics.operators import BoxMask, Downsample, Identity, LinearOperator
from mrimsm.solver_settings import RESTORE_INITS, RESTORE_TASKS, PosteriorSettings  # RESTORE_INITS: from noise, or the baseline image
from mrimsm.utils import check_output, resolve_device

__all__ = [
    "TASKS",
    "SR_FACTOR",
    "DEFAULT_IMAGE_CHECKPOINT",
    "default_image_checkpoint",
    "image_settings",
    "task_operator",
    "degrade",
    "baseline",
    "baseline_name",
    "image_metrics",
    "Restoration",
    "check_memory",
    "restore_observation",
    "simulate_restoration",
    "evaluate_folder",
    "RestoreReport",
    "restore_file",
    "format_report",
]

TASKS = RESTORE_TASKS
SR_FACTOR = 4
#: the shipped natural-image prior (``configs/ffhq_tiny.yaml`` on scikit-image photo crops)
DEFAULT_IMAGE_CHECKPOINT = asset_path("default_images.pt")
_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")


def default_image_checkpoint() -> Path:
    """The shipped natural-image MSM model; MrimsmError if the file is missing."""
    if not DEFAULT_IMAGE_CHECKPOINT.is_file():
        raise MrimsmError(
            f"the default natural-image model is missing ({DEFAULT_IMAGE_CHECKPOINT}); pass --checkpoint"
        )
    return DEFAULT_IMAGE_CHECKPOINT


#: Where restore's chain starts from the baseline image, per task (fraction of the T steps).
#: Chosen on 8 TRAINING crops (benchmarks/README.md; the held-out crops are the test set):
#: inpaint-box t0 0.2 / 0.4 / from noise: +1.60 / +2.60 / +2.43 dB over mean fill;
#: sr4: +0.06 / -0.03 / -0.05 dB over bicubic (mean of 4 samples, 50 steps, w 3).
RESTORE_T0 = {"inpaint-box": 0.4, "sr4": 0.2}


def image_settings(task: Optional[str] = None, **overrides):
    """Posterior settings for images: a warm start from the task's baseline image (mean
    fill / bicubic) at :data:`RESTORE_T0`, 50 steps, ``w = 3``, ``eta = 1``, the mean of 4
    samples (600 network evaluations), the exact projection onto the observation after each
    aggregation (``dc: operator`` with ``lambda = 0``: for ``T = I`` the replacement / pooling
    pseudo-inverse). Without a task: ``t0 = 0.3``. ``None`` overrides are ignored; the
    others are checked by :meth:`PosteriorSettings.validate` (the fields' annotations)."""
    t0 = RESTORE_T0.get(task, 0.3) if task is not None else 0.3
    values = dict(steps=50, w=3, eta=1.0, samples=4, dc="operator", dc_lambda=0.0, t0=t0, init="baseline")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PosteriorSettings(**values).validate()


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise MrimsmError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def task_operator(task: str, image_hw: tuple[int, int], device: torch.device | str = "cpu") -> LinearOperator:
    """``H`` of a task on ``(H, W)`` images: centred box of half the side, or 4x pooling."""
    _check_task(task)
    h, w = int(image_hw[0]), int(image_hw[1])
    if task == "inpaint-box":
        op = BoxMask((h, w), (h // 2, w // 2))
        op.mask = op.mask.to(device)
        return op
    if h % SR_FACTOR or w % SR_FACTOR:
        raise MrimsmError(f"image size {h} x {w} is not divisible by {SR_FACTOR} (sr4)")
    return Downsample(SR_FACTOR)


def degrade(clean: torch.Tensor, task: str, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The observation ``y = H x + e`` of a clean image ``(K, H, W)`` in [-1, 1].

    ``e``: Gaussian, standard deviation ``noise``, on observed pixels only (zeros stay
    zeros in the box). Returns ``(K, H, W)`` (box) or ``(K, H/4, W/4)`` (sr4) float32.
    """
    op = task_operator(task, tuple(clean.shape[-2:]), clean.device)
    y = op(clean[None].float())[0]
    if noise > 0:
        g = torch.Generator().manual_seed(int(seed) + 7919)
        e = torch.randn(y.shape, generator=g).to(y.device) * float(noise)
        y = y + (op.apply_mask(e[None])[0] if isinstance(op, BoxMask) else e)
    return y


def baseline_name(task: str) -> str:
    _check_task(task)
    return "mean-fill" if task == "inpaint-box" else "bicubic"


def baseline(y: torch.Tensor, task: str, image_hw: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The simple baseline of a task: ``(K, H, W)`` float32 in the units of ``y``.

    ``inpaint-box``: missing pixels = per-channel mean of the observed ones.
    ``sr4``: bicubic upsampling of ``y`` ``(K, h, w)`` to ``(K, 4h, 4w)`` with
    ``skimage.transform.resize(order=3)``.
    """
    _check_task(task)
    if task == "inpaint-box":
        hw = tuple(y.shape[-2:]) if image_hw is None else image_hw
        mask = task_operator(task, hw, y.device).mask[0]  # (1, H, W)
        mean = (y * mask).sum((-2, -1), keepdim=True) / mask.sum()
        return torch.where(mask > 0, y, mean.expand_as(y))
    from skimage.transform import resize

    k, h, w = y.shape
    arr = y.detach().cpu().numpy().transpose(1, 2, 0).astype(np.float64)
    up = resize(arr, (h * SR_FACTOR, w * SR_FACTOR, k), order=3, mode="reflect", anti_aliasing=False,
                preserve_range=True)
    return torch.from_numpy(up.transpose(2, 0, 1).astype(np.float32)).to(y.device)


def image_metrics(clean: torch.Tensor, pred: torch.Tensor, value_range=(-1.0, 1.0)) -> dict[str, float]:
    """PSNR and SSIM of ``pred`` against ``clean`` (``(K, H, W)``), both mapped to [0, 1]
    (``pred`` clipped), ``data_range = 1``; SSIM with 7 x 7 windows over the K channels."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    lo, hi = value_range
    a = ((clean.detach().cpu().double() - lo) / (hi - lo)).clamp(0, 1).numpy()
    b = ((pred.detach().cpu().double() - lo) / (hi - lo)).clamp(0, 1).numpy()
    win = min(7, a.shape[-1], a.shape[-2])
    win -= 1 - win % 2  # odd
    return {
        "psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
        "ssim": float(structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win)),
    }


@dataclass
class Restoration:
    """One restored image.

    Attributes:
        image: ``(K, H, W)`` float32 posterior mean, clipped to the value range.
        std: ``(K, H, W)`` float32 pixel-wise std over the samples, or ``None`` (one sample).
        samples: ``(S, K, H, W)`` float32 posterior samples (not clipped).
        observation: ``y`` as given to the solver.
        baseline: ``(K, H, W)`` float32 simple baseline (mean fill / bicubic), clipped.
        seconds: solver wall time.
        metrics: ``{"msm": {...}, baseline_name: {...}}`` (PSNR / SSIM) when the clean image is known.
    """

    image: torch.Tensor
    std: Optional[torch.Tensor]
    samples: torch.Tensor
    observation: torch.Tensor
    baseline: torch.Tensor
    seconds: float
    metrics: dict = field(default_factory=dict)


def _model_facts(loaded) -> tuple[int, int, tuple]:
    meta = loaded.meta
    if meta.get("operator") != "Identity":
        raise MrimsmError(f"{loaded.path} was trained on {meta.get('operator')} data, not on images")
    channels = int(meta["channels"])
    divisor = int(getattr(loaded.denoiser.backbone, "divisor", 1))
    value_range = tuple(float(v) for v in meta.get("value_range", (-1.0, 1.0)))
    return channels, divisor, value_range


def _check_image_size(hw: tuple[int, int], divisor: int, what: str) -> None:
    h, w = hw
    if h % divisor or w % divisor:
        raise MrimsmError(
            f"{what} is {h} x {w}, not divisible by {divisor} (the model's UNet downsampling); crop or resize it"
        )




def check_memory(loaded, hw: tuple[int, int], batch: int, device, task: str = "inpaint-box") -> int:
    """Refuse, before any work, a restoration whose network pass would not fit in memory.

    Peak memory of one denoiser pass on ``batch`` images of ``hw`` (the restored size) is
    estimated with :func:`mrimsm.models.memory.forward_bytes` (the attention scores grow
    with the 4th power of the side) and compared with :data:`mrimsm.limits.MEMORY_SHARE` of what
    ``device`` has free. Returns the estimate in bytes.

    Raises:
        MrimsmError: one line with the need, what is free and the largest square image
        (input side for ``sr4``) that fits, and ``--samples 1``'s if that is larger.
    """
    from mrimsm import limits
    from mrimsm.models.memory import forward_bytes, largest_square

    net = getattr(loaded.denoiser, "backbone", loaded.denoiser)
    need = forward_bytes(net, hw, batch)
    free = limits.available_bytes(device)
    if free is None or need <= MEMORY_SHARE * free:
        return need
    budget = int(MEMORY_SHARE * free)
    scale = SR_FACTOR if task == "sr4" else 1
    divisor = int(getattr(net, "divisor", 1))
    multiple = divisor * scale // math.gcd(divisor, scale)
    side = largest_square(net, budget, batch, multiple) // scale
    what = f"an sr4 input of {hw[0] // scale} x {hw[1] // scale} ({hw[0]} x {hw[1]} restored)" if scale > 1 \
        else f"a {hw[0]} x {hw[1]} image"
    hint = ""
    if batch > 1:
        one = largest_square(net, budget, 1, multiple) // scale
        hint = f" ({one} x {one} with --samples 1)" if one > side else ""
    gib = 2.0**30
    raise MrimsmError(
        f"{what} needs about {need / gib:,.1f} GiB with this model and {batch} sample(s) at once, more than "
        f"{MEMORY_SHARE:.0%} of the {free / gib:.1f} GiB free on {torch.device(device).type}; the largest that fits "
        f"is about {side} x {side}{hint}; crop or resize the image"
    )


def restore_observation(
    loaded,
    y: torch.Tensor,
    task: str,
    settings,
    seed: int = 0,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> Restoration:
    """Posterior samples for one observation ``y`` (``(K, H, W)`` box, ``(K, H/4, W/4)`` sr4).

    Args:
        loaded: :class:`~mrimsm.diffusion.method.LoadedMSM` of an image checkpoint.
        settings: :class:`~mrimsm.diffusion.posterior.PosteriorSettings` (:func:`image_settings`).
        seed: same seed, same samples.
        on_step: ``on_step(done, total)`` after each reverse step.
    """
    from mrimsm.physics.masks import training_mask_family
    from mrimsm.diffusion.posterior import posterior_sample
    from mrimsm.physics.masks import SubmaskSampler

    _check_task(task)
    channels, divisor, value_range = _model_facts(loaded)
    if y.dim() != 3:
        raise MrimsmError(f"the observation must be (K, H, W), got shape {tuple(y.shape)}")
    if y.shape[0] != channels:
        raise MrimsmError(_channel_message("the observation", int(y.shape[0]), channels, loaded.path))
    scale = SR_FACTOR if task == "sr4" else 1
    hw = (int(y.shape[-2]) * scale, int(y.shape[-1]) * scale)
    _check_image_size(hw, divisor, "the restored image" if scale > 1 else "the image")
    device = next(loaded.denoiser.parameters()).device
    check_memory(loaded, hw, int(settings.samples), device, task)
    y = y.to(device=device, dtype=torch.float32)
    H = task_operator(task, hw, device)
    sampler = SubmaskSampler(training_mask_family(loaded.meta), hw)
    lo, hi = value_range
    base = baseline(y.cpu(), task, hw).clamp(lo, hi)
    if settings.init not in RESTORE_INITS:
        raise MrimsmError(f"restore starts from noise (init none) or from the {baseline_name(task)} image "
                          f"(init baseline), not {settings.init!r}")
    t0 = time.perf_counter()
    _, std, samples = posterior_sample(
        loaded.denoiser, Identity(), H, y[None], sampler, settings, generator=int(seed),
        image_shape=(channels, *hw), on_step=on_step, x_init=base[None].to(device),
    )
    seconds = time.perf_counter() - t0
    samples = samples[:, 0].float().cpu()  # (S, K, H, W)
    image = samples.mean(0).clamp(lo, hi)
    std = std[0].float().cpu() if samples.shape[0] > 1 else None  # std of the value (real images)
    return Restoration(image=image, std=std, samples=samples, observation=y.cpu(), baseline=base, seconds=seconds)


def simulate_restoration(
    loaded,
    clean: torch.Tensor,
    task: str,
    settings,
    noise: float = 0.0,
    seed: int = 0,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> Restoration:
    """Degrade ``clean`` ``(K, H, W)`` in [-1, 1], restore it, and score the restoration and the
    baseline against it (``metrics["msm"]``, ``metrics[baseline_name(task)]``)."""
    channels, divisor, value_range = _model_facts(loaded)
    if clean.shape[0] != channels:
        raise MrimsmError(_channel_message("the image", int(clean.shape[0]), channels, loaded.path))
    _check_image_size(tuple(clean.shape[-2:]), divisor, "the image")
    y = degrade(clean.float().cpu(), task, noise=noise, seed=seed)
    out = restore_observation(loaded, y, task, settings, seed=seed, on_step=on_step)
    out.metrics = {
        "msm": image_metrics(clean, out.image, value_range),
        baseline_name(task): image_metrics(clean, out.baseline, value_range),
    }
    return out


def _model_channels(img: np.ndarray, channels: int, input: Path, ckpt) -> np.ndarray:
    """``img`` ``(H, W, K)`` with the model's channel count: a grayscale image is repeated
    to RGB for an RGB model; an RGB image for a grayscale model is refused (its colour
    would be dropped without a word)."""
    from mrimsm.data.images import _match_channels

    if img.shape[-1] == channels:
        return img
    if img.shape[-1] == 1:
        return _match_channels(img, channels)
    raise MrimsmError(_channel_message(str(input), img.shape[-1], channels, ckpt))


def _kind(channels: int) -> str:
    return {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")


def _channel_message(what: str, got: int, want: int, ckpt) -> str:
    return f"{what} is {_kind(got)} but the model {Path(str(ckpt)).name} was trained on {_kind(want)} images"


def evaluate_folder(
    loaded,
    folder: str | os.PathLike,
    task: str,
    settings,
    noise: float = 0.0,
    seed: int = 0,
    size: Optional[int] = None,
    limit: Optional[int] = None,
    on_image: Optional[Callable[[int, int], None]] = None,
) -> dict:
    """Simulated restoration of every PNG/JPEG in ``folder`` (sorted; at most ``limit``).

    Each image is centre-cropped and resized to ``size`` (default: the model's training
    size), degraded (image ``i`` with seed ``seed + i``), restored and scored.

    Returns:
        ``{"names": [...], "msm": {"psnr": [...], "ssim": [...]}, baseline_name: {...},
        "mean": {"msm": {"psnr", "ssim"}, baseline_name: {...}}, "seconds": total}``.
    """
    from mrimsm.data.images import IMAGE_SUFFIXES, center_crop_resize, read_image, to_model_range

    channels, _, value_range = _model_facts(loaded)
    size = int(size or loaded.meta["image_shape"][0])
    if not Path(folder).is_dir():
        raise MrimsmError(f"{folder} is not a directory of images")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise MrimsmError(f"{folder} holds no PNG/JPEG image")
    base = baseline_name(task)
    out: dict = {"names": [], "msm": {"psnr": [], "ssim": []}, base: {"psnr": [], "ssim": []}, "seconds": 0.0}
    lo, hi = value_range
    for i, path in enumerate(files):
        img = read_image(path)
        if img.shape[-1] != channels:
            img = np.repeat(img, 3, -1) if channels == 3 else img.mean(-1, keepdims=True)
        x = torch.from_numpy(to_model_range(center_crop_resize(img, size)))
        x = x * (hi - lo) / 2.0 + (hi + lo) / 2.0
        r = simulate_restoration(loaded, x, task, settings, noise=noise, seed=seed + i)
        out["names"].append(path.name)
        out["seconds"] += r.seconds
        for name in ("msm", base):
            for key in ("psnr", "ssim"):
                out[name][key].append(r.metrics[name][key])
        if on_image is not None:
            on_image(i + 1, len(files))
    out["mean"] = {name: {k: float(np.mean(v)) for k, v in out[name].items()} for name in ("msm", base)}
    return out


# -- files ------------------------------------------------------------------------


@dataclass
class RestoreReport:
    """What :func:`restore_file` did: the restoration, the files written, the model."""

    restoration: Restoration
    task: str
    outputs: dict
    checkpoint: str
    model_size: tuple
    image_size: tuple
    simulate: bool


def _uncertainty_png(path: Path, std: torch.Tensor) -> float:
    """Channel-mean std as a viridis PNG scaled to its maximum; returns that maximum."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    from mrimsm.data.images import save_image

    s = std.float().mean(0).numpy()
    peak = float(s.max())
    rgb = colormaps["viridis"](s / peak if peak > 0 else s)[..., :3]
    save_image(path, rgb.transpose(2, 0, 1), value_range=(0.0, 1.0))
    return peak


def _sibling(output: Path, tag: str) -> Path:
    return output.with_name(f"{output.stem}_{tag}{output.suffix}")


def restore_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    task: str,
    checkpoint: Optional[str | os.PathLike] = None,
    simulate: bool = False,
    settings=None,
    noise: float = 0.01,
    seed: int = 0,
    device: Optional[str | torch.device] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> RestoreReport:
    """Restore an image file and write PNGs.

    Args:
        input: the observation (box task: the image with its central box blanked, any
            content there is ignored; sr4: the low-resolution image), or with
            ``simulate`` a clean image to degrade first.
        output: restored image (``.png`` / ``.jpg``); beside it ``<stem>_uncertainty.png``
            (more than one sample) and, with ``simulate``, ``<stem>_observed.png`` and
            ``<stem>_<baseline>.png``.
        checkpoint: image MSM checkpoint (default: :func:`default_image_checkpoint`).
        settings: :func:`image_settings` (default).
        noise: ``simulate`` only: std of the observation noise, images in [-1, 1].
        device: see :func:`~mrimsm.utils.resolve_device` (default: CUDA when present).

    Raises:
        MrimsmError: unknown task, unreadable input, output == input, channel mismatch,
        sizes not divisible by the UNet's downsampling (or by 4 for sr4).
    """
    from mrimsm.data.images import image_to_tensor, read_image, save_image
    from mrimsm.inference import load_msm

    _check_task(task)
    input, output = Path(input), Path(output)
    if output.suffix.lower() not in _OUTPUT_SUFFIXES:
        raise MrimsmError(f"-o {output}: the output must end in .png or .jpg")
    if check_finite(noise, "--noise") < 0:
        raise MrimsmError(f"--noise must be >= 0, got {noise}")
    seed = check_seed(seed)
    settings = settings if settings is not None else image_settings(task)
    written = {"restored": output}
    if settings.samples > 1:
        written["uncertainty"] = _sibling(output, "uncertainty")
    if simulate:
        written["observed"] = _sibling(output, "observed")
        written[baseline_name(task)] = _sibling(output, baseline_name(task))
    for role, path in written.items():
        if path.resolve() == input.resolve():
            raise MrimsmError(f"the {role} output {path} would overwrite the input; choose another -o")
        check_output(path)  # a directory, under a file, not writable: before any work
    img = read_image(input)  # (H, W, K) in [0, 1]; one-line error for non-images
    ckpt = Path(checkpoint) if checkpoint is not None else default_image_checkpoint()
    loaded = load_msm(ckpt, device=resolve_device(device))
    channels, divisor, value_range = _model_facts(loaded)
    for role, path in written.items():
        if path.resolve() == Path(loaded.path).resolve():
            raise MrimsmError(f"the {role} output {path} would overwrite the checkpoint; choose another -o")
    img = _model_channels(img, channels, input, loaded.path)
    x = image_to_tensor(img)
    lo, hi = value_range
    x = x * (hi - lo) / 2.0 + (hi + lo) / 2.0  # [-1, 1] -> the checkpoint's range
    if simulate:
        if task == "sr4":
            h, w = x.shape[-2:]
            if h % SR_FACTOR or w % SR_FACTOR:
                raise MrimsmError(f"{input} is {h} x {w}, not divisible by {SR_FACTOR} (sr4 --simulate)")
        _check_image_size(tuple(x.shape[-2:]), divisor, str(input))
        result = simulate_restoration(loaded, x, task, settings, noise=noise, seed=seed, on_step=on_step)
    else:
        result = restore_observation(loaded, x, task, settings, seed=seed, on_step=on_step)
    save_image(output, result.image, value_range)
    if result.std is not None:
        _uncertainty_png(written["uncertainty"], result.std)
    if simulate:
        save_image(written["observed"], result.observation, value_range)
        save_image(written[baseline_name(task)], result.baseline, value_range)
    return RestoreReport(
        restoration=result,
        task=task,
        outputs=written,
        checkpoint=str(loaded.path),
        model_size=tuple(int(s) for s in loaded.meta["image_shape"]),
        image_size=tuple(int(s) for s in result.image.shape[-2:]),
        simulate=simulate,
    )


def format_report(report: RestoreReport) -> str:
    """Plain text: what was restored and, with ``simulate``, a PSNR / SSIM table."""
    r = report.restoration
    lines = [
        f"{report.task}: {report.image_size[0]} x {report.image_size[1]} image, {r.samples.shape[0]} sample(s), "
        f"{r.seconds:.1f} s ({Path(report.checkpoint).name}, "
        f"trained at {report.model_size[0]} x {report.model_size[1]})"
    ]
    if report.model_size != report.image_size:
        lines.append("note: the image size differs from the training size; the prior may fit it less well")
    if r.metrics:
        lines.append(f"{'method':<10} {'PSNR':>7} {'SSIM':>7}")
        for name, m in r.metrics.items():
            lines.append(f"{name:<10} {m['psnr']:7.2f} {m['ssim']:7.4f}")
    return "\n".join(lines)
