"""The one training loop, shared by every method (MSM, SSDU, ...).

A method is a :class:`~mrimsm.trainmethod.TrainMethod` (its data, model, loss,
preview, checkpoint metadata, resume check) named in the table
:data:`mrimsm.methods.TRAINING_METHODS`::

    class MSMMethod(TrainMethod):
        config_sections = {"model": UNetConfig, "diffusion": DiffusionConfig}
        def build_model(self, cfg): ...
        def loss(self, model, batch, generator): ...

:func:`train` then does everything else: a seeded resumable batch order, AdamW, EMA,
gradient clipping, mixed precision on CUDA, DDP under ``torchrun``, a JSON-lines
log, preview grids, atomic checkpoints and ``--resume``.

Reproducibility: before step ``s`` every process reseeds torch from
``(train.seed, rank, s)`` and hands the method a fresh ``torch.Generator``
seeded the same way; the batch order is a function of ``(train.seed, epoch)``.
So a run resumed from the checkpoint of step ``s`` repeats the uninterrupted
run's steps ``s+1, ...`` exactly (up to nondeterministic kernels on GPU).
Log records average the steps since the previous record; after a resume the
first record covers only the steps since the checkpoint, so choose
``ckpt_every`` as a multiple of ``log_every`` for a log identical to the
uninterrupted run's (the per-step losses in :class:`TrainResult` always are).

Run directory layout: ``config.yaml`` (the resolved config), ``last.pt``
(newest checkpoint), ``checkpoints/step_XXXXXXX.pt`` (every
``train.keep_every`` steps), ``log.jsonl`` (one JSON object per logged step),
``samples/step_XXXXXXX.png`` (preview grids every ``train.sample_every`` steps).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn

from mrimsm import distributed
from mrimsm.checkpoint import (
    LAST_NAME,
    capture_rng_state,
    load_checkpoint,
    load_state_checked,
    restore_rng_state,
    save_checkpoint,
)
from mrimsm.config import Config
from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.interrupt import deferred_interrupts
from mrimsm.limits import check_memory
from mrimsm.methods import training_method
from mrimsm.trainmethod import TrainMethod
from mrimsm.utils import atomic_path, check_output

__all__ = [
    "TrainResult",
    "train",
    "StepBatchSampler",
    "EMA",
    "step_seed",
    "save_grid",
]


class StepBatchSampler:
    """Seeded, resumable batch order: yields the index lists of steps
    ``start_step, start_step + 1, ...`` for this rank.

    The ``n`` examples are permuted once per epoch with a generator seeded by
    ``(seed, epoch)``; each step takes the next ``batch_size * world_size``
    indices of the permutation (a partial last batch is dropped) and rank ``r``
    the ``r``-th slice of ``batch_size`` of them. So ``world_size`` processes
    with ``batch_size`` each see exactly the examples of one process with
    ``batch_size * world_size``, and the order at step ``s`` depends on ``s``
    alone (resuming mid-epoch needs no extra state).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, max_steps: Optional[int] = None):
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_step = int(start_step)
        self.max_steps = max_steps
        self.global_batch = self.batch_size * self.world_size
        if self.n < self.global_batch:
            raise MrimsmError(
                f"the training set has {self.n} examples, fewer than one batch "
                f"({self.batch_size} x {self.world_size} processes); lower train.batch_size"
            )
        self.steps_per_epoch = self.n // self.global_batch
        self._perm_epoch = -1
        self._perm: Optional[np.ndarray] = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        start = k * self.global_batch + self.rank * self.batch_size
        return [int(i) for i in perm[start : start + self.batch_size]]

    def state(self, step: int) -> dict:
        epoch, k = divmod(step, self.steps_per_epoch)
        return {"seed": self.seed, "epoch": epoch, "batch_in_epoch": k, "steps_per_epoch": self.steps_per_epoch}

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(0, self.max_steps - self.start_step)


_INIT_STREAM = 1_000_001  # pseudo-ranks of the seeds of the initial weights and the previews
_PREVIEW_STREAM = 1_000_002


def step_seed(seed: int, rank: int, step: int) -> int:
    """The 63-bit seed of step ``step`` on rank ``rank``."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(2, np.uint64)[0] >> 1)


# -- EMA ---------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied).

    ``decay_at(step) = min(decay, (1 + step) / (10 + step))``: a short warm-up
    so that short runs are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)


# -- pictures ------------------------------------------------------------------------


def _to_display(images: torch.Tensor) -> np.ndarray:
    """``(N, H, W)`` complex/real or ``(N, K, H, W)`` real -> ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1]."""
    x = images.detach().cpu()
    if x.is_complex():
        x = x.abs()
        if x.dim() == 4:
            x = x.pow(2).sum(1).sqrt()
    x = x.float().numpy()
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else np.moveaxis(x[:, :3], 1, -1)
    if x.ndim == 4:  # RGB: clip to [0, 1]
        return np.clip(x, 0.0, 1.0)
    out = np.empty_like(x)
    for i, img in enumerate(x):  # magnitudes: each image scaled by its 99.5th percentile
        hi = float(np.percentile(np.abs(img), 99.5)) or 1.0
        out[i] = np.clip(img / hi, 0.0, 1.0)
    return out


def save_grid(path: str | os.PathLike, images: torch.Tensor, ncols: Optional[int] = None) -> Path:
    """Write images as one PNG grid, atomically.

    Args:
        images: ``(N, H, W)`` complex64 (magnitudes shown) or real, or
            ``(N, K, H, W)`` real (``K = 3``: RGB in [0, 1]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    tiles = _to_display(images)
    n = tiles.shape[0]
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    h, w = tiles.shape[1:3]
    pad = 2
    shape = (nrows * (h + pad) + pad, ncols * (w + pad) + pad) + tiles.shape[3:]
    grid = np.ones(shape, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tiles[i]
    path = Path(path)
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return path


# -- the loop -------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    run_dir: Path
    start_step: int
    step: int
    losses: list = field(default_factory=list)  # (step, loss of this rank) for each step run here
    model: Optional[nn.Module] = None  # the trained module (unwrapped)
    ema: Optional[nn.Module] = None
    steps_per_s: float = float("nan")
    peak_memory_mb: float = float("nan")


def _to_device(batch: Mapping, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 kernels on this CPU (AVX-512 or AMX). Without them (an
    AVX2-only CPU) bf16 convolutions are emulated: measured 44x slower than fp32 for a
    64-channel 3x3 convolution on one AVX2 core, so ``train.cpu_bf16`` falls back to fp32.
    (Sampling asks the stricter :func:`mrimsm.diffusion.denoiser.cpu_has_native_bf16`.)"""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def _amp_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype of the loss: on CUDA ``train.amp`` (bf16, else fp16); on CPU
    ``train.cpu_bf16`` (bf16 autocast: convolutions and matmuls in bf16, while the
    physics (complex64), the losses and the optimizer stay fp32) where the CPU has fast
    bf16 kernels (:func:`cpu_has_fast_bf16`), else fp32."""
    if device.type == "cpu":
        return torch.bfloat16 if cfg.train.cpu_bf16 and cpu_has_fast_bf16() else None
    if not cfg.train.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log records after ``last_step`` (they are about to be re-run)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if int(rec.get("step", 0)) <= last_step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(x + "\n" for x in keep))


def _write_config(path: Path, cfg: Config) -> None:
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _float(v: Any) -> float:
    return float(v.detach().float().mean().item()) if isinstance(v, torch.Tensor) else float(v)


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    device: Optional[str] = None,
    progress: Optional[Callable[..., Any]] = None,
    echo: Callable[[str], None] = print,
    amp_dtype: Optional[torch.dtype] = None,
    allow_data_change: bool = False,
) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.data`` for ``cfg.train.max_steps`` steps.

    Args:
        cfg: a validated :class:`Config`.
        run_dir: output directory (see the module docstring). Without
            ``resume`` it must not already hold a checkpoint.
        resume: continue from ``run_dir/last.pt`` (start at step 0 if there is none).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        progress: tqdm-like factory, called as ``progress(total=, initial=, desc=)``
            on rank 0; ``None`` shows no bar.
        echo: where rank 0's one-line messages go.
        amp_dtype: force an autocast dtype (tests); default: bf16/fp16 on CUDA
            when ``train.amp``, bf16 on CPU when ``train.cpu_bf16``.
        allow_data_change: resume a checkpoint that was trained on other data (other
            ``data.*`` settings, another ``--data`` directory, a data set prepared with
            other parameters; :meth:`TrainMethod.check_resume`) with a note instead of
            refusing: fine-tuning.

    Every refusal (a bad config, a batch larger than the data set, a checkpoint that
    cannot be resumed) comes before anything is written to ``run_dir``; a run directory
    this call created is removed again when the run fails before its first checkpoint.

    Returns:
        a :class:`TrainResult`.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST_NAME
    if not resume and last.exists():
        raise MrimsmError(f"{run_dir} already holds a checkpoint; pass --resume to continue it or choose another --out")
    check_output(run_dir, kind="dir", flag="--out")  # before any work; nothing is created

    method_cls = training_method(cfg.method)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # what this run would create
    info = distributed.init(device)
    try:
        return _train(cfg, run_dir, method_cls, info, resume, progress, echo, amp_dtype, allow_data_change)
    except MrimsmError as exc:
        if created and info.is_main and not isinstance(exc, Interrupted) and not last.exists():
            _discard_new_run(run_dir, created[-1])
        raise
    finally:
        distributed.cleanup()


def _discard_new_run(run_dir: Path, top: Path) -> None:
    """Remove what a failed run wrote into the run directory it created (``config.yaml``,
    ``log.jsonl``, preview grids), then that directory and the parents it created when
    nothing else is in them: a refused run leaves no trace."""
    for name in ("config.yaml", "log.jsonl"):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    for png in (run_dir / "samples").glob("step_*.png") if (run_dir / "samples").is_dir() else ():
        with contextlib.suppress(OSError):
            png.unlink()
    for d in (run_dir / "samples", run_dir / "checkpoints", *[p for p in (run_dir, *run_dir.parents)
                                                              if p == top or top in p.parents]):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty


def rerun_command(cfg: Config, run_dir: Path, resume: bool = True) -> str:
    """The ``mrimsm train`` command line that continues this run (``resume``) or runs it
    again: the config, ``--method`` unless it is msm, ``--data`` for a ``data.root`` (so
    that a ``--data`` override is kept and the resume sees the same data), ``--out``,
    ``--max-steps``."""
    parts = ["mrimsm", "train", str(cfg.source)]
    if cfg.method != "msm":
        parts += ["--method", cfg.method]
    if cfg.data.simulated is None and cfg.data.root is not None:
        parts += ["--data", str(cfg.data.root)]
    parts += ["--out", str(run_dir)] + (["--resume"] if resume else []) + ["--max-steps", str(cfg.train.max_steps)]
    return " ".join(shlex.quote(x) for x in parts)


@dataclass
class _Run:
    """What one training run holds: the method, the trained module, its EMA, the optimizer."""

    method: TrainMethod
    bundle: Any
    model: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: Optional[torch.dtype]


def _check_model_memory(method: TrainMethod, cfg: Config, dev: torch.device) -> None:
    """MrimsmError (one line) when the model's float32 weights, EMA, gradients and AdamW's
    two moments (5 copies of the parameters) do not fit in ``dev``'s free memory. The
    parameters are counted on PyTorch's ``meta`` device, which allocates nothing; a model
    that cannot be built there is not checked."""
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in method.build_model(cfg).parameters())
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return
    check_memory(5 * 4 * params, f"training a model of {params:,} parameters",
                 "lower model.model_channels (or channel_mult)", device=dev)


def _build(cfg: Config, method_cls: type, info: distributed.DistInfo, amp_dtype: Optional[torch.dtype]) -> _Run:
    """Data, method, model (same initial weights on every rank), EMA, AdamW, loss scaler."""
    dev, tc = info.device, cfg.train
    bundle = method_cls.build_dataset(cfg, info)
    method = method_cls(cfg, bundle.info)
    _check_model_memory(method, cfg, dev)
    torch.manual_seed(step_seed(tc.seed, _INIT_STREAM, 0))  # same initial weights on every rank
    model = method.build_model(cfg).to(dev)
    ema = EMA(model, tc.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    amp = amp_dtype if amp_dtype is not None else _amp_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16 and dev.type == "cuda"))
    return _Run(method, bundle, model, ema, opt, scaler, amp)


def _resume(run: _Run, cfg: Config, run_dir: Path, info: distributed.DistInfo, say: Callable[[str], None],
            allow_data_change: bool = False) -> int:
    """Load ``run_dir/last.pt`` into ``run`` (weights, EMA, optimizer, scaler, RNG); its step.
    The method's :meth:`~mrimsm.trainmethod.TrainMethod.check_resume` refuses a checkpoint
    whose config (or data) the current one may not continue."""
    last = run_dir / LAST_NAME
    if not last.exists():
        say(f"no checkpoint in {run_dir}; starting from step 0")
        return 0
    ckpt = load_checkpoint(last, map_location=info.device)
    if ckpt["method"] != cfg.method:
        raise MrimsmError(f"{last} was trained with method {ckpt['method']!r}, not {cfg.method!r}")
    for note in run.method.check_resume(ckpt["config"], last, saved_meta=ckpt.get("meta"),
                                        allow_data_change=allow_data_change) or []:
        say(note)
    load_state_checked(run.model, ckpt["model"], str(last))
    load_state_checked(run.ema.module, ckpt["ema"], str(last))
    if ckpt.get("optimizer") is not None:
        run.opt.load_state_dict(ckpt["optimizer"])  # bf16 moments (compact states) are cast to fp32
        # the config's learning rate holds on resume (the optimizer state carries the old one)
        saved = {float(g["lr"]) for g in run.opt.param_groups}
        for group in run.opt.param_groups:
            group["lr"] = float(cfg.train.lr)
        if saved != {float(cfg.train.lr)}:
            say(f"train.lr {cfg.train.lr:g} replaces the checkpoint's {', '.join(f'{v:g}' for v in sorted(saved))}")
    elif (ckpt.get("compact") or {}).get("optimizer") == "dropped":
        say(f"{last} is a compact state without optimizer moments; AdamW starts afresh (re-warms)")
    else:
        raise MrimsmError(f"{last} holds no optimizer state and cannot be resumed")
    if ckpt.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    start = int(ckpt["step"])
    ranks = (ckpt.get("rng") or {}).get("ranks") or []
    if len(ranks) == info.world_size:
        restore_rng_state(ranks[info.rank])
    say(f"resuming {run_dir} from step {start}")
    return start


def _write_checkpoint(run: _Run, cfg: Config, run_dir: Path, info: distributed.DistInfo,
                      sampler: StepBatchSampler, at_step: int) -> None:
    """``last.pt`` (and ``checkpoints/step_*.pt`` every ``train.keep_every`` steps); RNG of every rank."""
    rng = distributed.all_gather_object(capture_rng_state(sampler.state(at_step)), info)
    if not info.is_main:
        return
    fields = dict(
        method=cfg.method,
        step=at_step,
        config=cfg.to_dict(),
        meta=run.method.checkpoint_meta(cfg),
        model=run.model.state_dict(),
        ema=run.ema.module.state_dict(),
        optimizer=run.opt.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        rng={"ranks": rng, "world_size": info.world_size},
    )
    save_checkpoint(run_dir / LAST_NAME, **fields)
    if cfg.train.keep_every and at_step % cfg.train.keep_every == 0:
        save_checkpoint(run_dir / "checkpoints" / f"step_{at_step:07d}.pt", **fields)


def _optimizer_step(run: _Run, net: nn.Module, batch: dict, gen: torch.Generator, cfg: Config,
                    step: int, last: Path) -> tuple[float, float, dict]:
    """One step: loss (under autocast), backward, clipping, AdamW; ``(loss, grad norm, logs)``."""
    tc, dev = cfg.train, gen.device
    with torch.autocast(dev.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
        loss, logs = run.method.loss(net, batch, gen)
    loss_value = float(loss.detach().item())
    if not math.isfinite(loss_value):
        raise MrimsmError(
            f"the loss became {loss_value} at step {step + 1}; lower train.lr or check the data "
            f"(last checkpoint: {last if last.exists() else 'none'})"
        )
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    grad_norm = float("nan")
    if tc.grad_clip > 0:
        run.scaler.unscale_(run.opt)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip))
    run.scaler.step(run.opt)
    run.scaler.update()
    return loss_value, grad_norm, logs or {}


class _LogWindow:
    """The values of the steps since the last log record, averaged across ranks into it."""

    def __init__(self, path: Path, info: distributed.DistInfo):
        self.path, self.info = path, info
        self.values: dict[str, list] = {}
        self.steps = 0
        self.t_start = self.t_window = time.perf_counter()

    def add(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """One step's ``(key, value)`` pairs (a key may come twice: both values count)."""
        for k, v in pairs:
            self.values.setdefault(k, []).append(_float(v))
        self.steps += 1

    def write(self, step: int, epoch: int, lr: float, bar: Any) -> None:
        now = time.perf_counter()
        rec = {"step": step, "epoch": epoch}
        for k, vals in self.values.items():
            rec[k] = distributed.all_reduce_mean(float(np.mean(vals)), self.info)
        rec["lr"] = lr
        rec["steps_per_s"] = self.steps / max(now - self.t_window, 1e-9)
        rec["elapsed_s"] = now - self.t_start
        if self.info.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4g}", it_s=f"{rec['steps_per_s']:.2f}")
        self.values, self.steps, self.t_window = {}, 0, now


def _train(cfg, run_dir, method_cls, info, resume, progress, echo, amp_dtype, allow_data_change=False) -> TrainResult:
    dev = info.device
    say = echo if info.is_main else (lambda _msg: None)
    tc = cfg.train
    last = run_dir / LAST_NAME
    # every check first (data, model, checkpoint, batch size, preview examples), then the first write
    run = _build(cfg, method_cls, info, amp_dtype)
    start = _resume(run, cfg, run_dir, info, say, allow_data_change) if resume else 0
    dataset, collate = run.bundle.dataset, run.bundle.collate
    sampler = StepBatchSampler(len(dataset), tc.batch_size, tc.seed, info.rank, info.world_size, start, tc.max_steps)
    preview_batch = None
    if tc.sample_every and info.is_main:
        preview_batch = _to_device(collate([dataset[i] for i in range(min(cfg.sample.preview_num, len(dataset)))]), dev)
    if info.is_main and start < tc.max_steps:  # a no-op resume leaves the run as it is
        if dev.type == "cpu" and tc.cpu_bf16 and run.amp is None:  # after every check: bad input stays one line
            say("note: train.cpu_bf16: this CPU has no fast bf16 kernels (no AVX-512 or AMX); training in fp32")
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(run_dir / "config.yaml", cfg)
        _truncate_log(run_dir / "log.jsonl", start)
    distributed.barrier(info)

    net = distributed.wrap(run.model, info)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=tc.num_workers, pin_memory=dev.type == "cuda"
    )

    result = TrainResult(run_dir=run_dir, start_step=start, step=start)
    bar = progress(total=tc.max_steps, initial=start, desc="train") if (progress and info.is_main) else None
    window = _LogWindow(run_dir / "log.jsonl", info)
    # which examples may be flipped: a dataset that knows its acquisitions says (never sagittal)
    flippable = None
    if cfg.data.flip_prob > 0 and hasattr(dataset, "flippable"):
        flippable = torch.from_numpy(dataset.flippable(cfg.data.flip_exclude))
    step = saved_step = start
    run.model.train()
    with deferred_interrupts() as stop, _closing(bar):  # SIGINT / SIGTERM: finish the step, save, stop
        for indices_batch in _batches(loader, lambda exc: _data_failure(exc, run, cfg, run_dir, info, sampler,
                                                                        step, saved_step)):
            # reseed: step s is the same whether or not the run was resumed
            seed = step_seed(tc.seed, info.rank, step)
            torch.manual_seed(seed)
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed)
            batch = _to_device(indices_batch, dev)
            if cfg.data.flip_prob > 0:  # its own stream: the method's draws stay those of an unflipped run
                from mrimsm.data.augment import flip_batch

                allowed = None if flippable is None else flippable[indices_batch["index"]]
                batch = flip_batch(batch, cfg.data.flip_prob,
                                   torch.Generator().manual_seed(step_seed(tc.seed, info.rank, step) ^ 0xF11F), allowed)
            batch["step"] = step
            batch["epoch"] = sampler.epoch_of(step)
            loss_value, grad_norm, logs = _optimizer_step(run, net, batch, gen, cfg, step, last)
            step += 1
            run.ema.update(run.model, step)

            result.losses.append((step, loss_value))
            window.add([("loss", loss_value), *([("grad_norm", grad_norm)] if tc.grad_clip > 0 else []), *logs.items()])
            if step % tc.log_every == 0 or step == tc.max_steps:
                window.write(step, sampler.epoch_of(step - 1), run.opt.param_groups[0]["lr"], bar)
            if bar is not None:
                bar.update(1)

            if tc.sample_every and step % tc.sample_every == 0 and info.is_main:
                _write_preview(run.method, run.ema.module, preview_batch, run_dir, step, tc.seed, dev)
            saved = (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.max_steps
            if saved:
                _write_checkpoint(run, cfg, run_dir, info, sampler, step)
                saved_step = step
            if step < tc.max_steps and _stop_requested(stop, info):
                if not saved:
                    _write_checkpoint(run, cfg, run_dir, info, sampler, step)
                raise Interrupted(
                    f"{stop.name or 'a signal on another rank'} at step {step} of {tc.max_steps}; "
                    f"checkpoint {last} written; resume with: {rerun_command(cfg, run_dir)}"
                )
    return _finish(result, run, step, start, window.t_start, tc.max_steps, last, run_dir, dev, say)


def _batches(loader: Iterable, on_error: Callable[[MrimsmError], MrimsmError]) -> Iterator[Any]:
    """The loader's batches; a data error while reading one (a shard truncated or locked
    meanwhile: :class:`MrimsmError` from the dataset) becomes ``on_error(exc)``."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except MrimsmError as exc:
            if isinstance(exc, Interrupted):
                raise
            raise on_error(exc) from None
        yield batch


def _worker_message(exc: BaseException) -> str:
    """The one-line message of a data error; a DataLoader worker's error arrives as
    ``Caught MrimsmError in DataLoader worker process 0. Original Traceback ...``: its
    last line holds the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = "mrimsm.errors.MrimsmError: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _data_failure(exc: MrimsmError, run: _Run, cfg: Config, run_dir: Path, info: distributed.DistInfo,
                  sampler: StepBatchSampler, step: int, saved_step: int) -> MrimsmError:
    """The error of a batch that could not be read after ``step`` steps: its message, the
    checkpoint (written now for the steps since the last one; on one process, where no
    other rank waits in a collective) and the command that continues the run."""
    last = run_dir / LAST_NAME
    if step > saved_step and info.world_size == 1:
        _write_checkpoint(run, cfg, run_dir, info, sampler, step)
        saved_step = step
        where = f"checkpoint {last} written at step {step}"
    elif last.exists():
        where = f"checkpoint {last} (step {saved_step}) kept"
    else:
        return MrimsmError(f"{_worker_message(exc)}; no checkpoint was written; after fixing the data, "
                           f"run again: {rerun_command(cfg, run_dir, resume=False)}")
    return MrimsmError(f"{_worker_message(exc)}; {where}; after fixing the data, resume with: "
                       f"{rerun_command(cfg, run_dir)}")


def _finish(result: TrainResult, run: _Run, step: int, start: int, t_start: float, max_steps: int,
            last: Path, run_dir: Path, dev: torch.device, say: Callable[[str], None]) -> TrainResult:
    """Fill in the result and say what was done."""
    if step == start and start < max_steps:
        raise MrimsmError("the data loader yielded no batches")
    elapsed = time.perf_counter() - t_start
    result.step = step
    result.model = run.model
    result.ema = run.ema.module
    result.steps_per_s = (step - start) / elapsed if step > start and elapsed > 0 else float("nan")
    result.peak_memory_mb = _peak_memory_mb(dev)
    if step > start:
        say(f"trained steps {start + 1}-{step}: final loss {result.losses[-1][1]:.4g}, "
            f"{result.steps_per_s:.2f} steps/s; checkpoint {last}")
    else:
        say(f"{run_dir} is already at step {step} (train.max_steps = {max_steps}); nothing to do")
    return result


def _stop_requested(flag: Any, info: distributed.DistInfo) -> bool:
    """Whether a signal asked to stop, on any rank (all ranks stop at the same step)."""
    if info.world_size > 1:
        return distributed.all_reduce_mean(float(bool(flag)), info) > 0
    return bool(flag)


@contextlib.contextmanager
def _closing(bar: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


def _write_preview(method: TrainMethod, ema_model: nn.Module, batch: Optional[dict], run_dir: Path,
                   step: int, seed: int, dev: torch.device) -> None:
    gen = torch.Generator(device=dev)
    gen.manual_seed(step_seed(seed, _PREVIEW_STREAM, step))
    was_training = ema_model.training
    ema_model.eval()
    with torch.no_grad():
        images = method.preview(ema_model, batch, gen)
    ema_model.train(was_training)
    if images is not None:
        save_grid(run_dir / "samples" / f"step_{step:07d}.png", images)
