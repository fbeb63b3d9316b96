"""Training and sampling throughput of the MSM prior: steps/s and images/s of one
training step, network evaluations (NFE) per second when sampling, in fp32 and
bf16 autocast, optionally with torch.compile.

Synthetic batches with the config's image size (multi-coil k-space of random
smooth images, smooth coil maps, paper-style masks), so no prepared data is
needed. A training step is the trainer's: the MSM loss (forward, backward through
the physics), gradient clipping, AdamW and the EMA, not data loading. An NFE is
one image through the denoiser in eval mode under ``no_grad``, as the sampler and
the posterior solver call it (``local_estimate``: adjoint, the projection skip's
conjugate gradients, the network, forward operator). bf16 sampling uses the
denoiser's ``inference_dtype`` (the network alone in bf16; the physics stays
complex64); bf16 training autocasts the loss as ``mrimsm.train`` does.

    .venv/bin/python -m benchmarks.train_speed                       # the 64 and 256 default priors, CPU
    .venv/bin/python -m benchmarks.train_speed --device cuda --batch 64
    .venv/bin/python -m benchmarks.train_speed --config configs/tiny.yaml --steps 5 --threads 1 --clock process
    .venv/bin/python -m benchmarks.train_speed --compile              # also torch.compile'd rows

``--clock process`` divides by this process's CPU time instead of wall time: on
a CPU shared with other jobs, wall time mostly measures the scheduler (the
ratios fp32 / bf16 stay meaningful; the absolute figure is per busy core-set).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks import REPO
from benchmarks.arguments import AUTO, base_parser, run_main, setup_torch
DEFAULT_CONFIGS = ("configs/default_msm.yaml", "configs/default_msm256.yaml")


def synthetic_batch(batch: int, size: int, coils: int, rho: float, seed: int = 0) -> dict:
    """A batch shaped like MeasurementDataset's collate: y, mask, maps."""
    from mrimsm.physics.masks import PaperCartesian, column_mask_tensor
    from mrimsm.physics.operators import MultiCoilMRI

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angles = torch.arange(coils) * 2 * math.pi / coils
    sens = torch.stack([torch.exp(-((xx - torch.cos(a)) ** 2 + (yy - torch.sin(a)) ** 2)) for a in angles])
    maps = (sens / sens.pow(2).sum(0, keepdim=True).sqrt()).to(torch.complex64)
    imgs = torch.nn.functional.avg_pool2d(torch.rand(batch, 1, size, size, generator=g), 9, 1, 4)[:, 0]
    imgs = (imgs / imgs.amax(dim=(-2, -1), keepdim=True)).to(torch.complex64)
    family = PaperCartesian(4, center_lines=max(1, round(20 * size / 256)))
    mask = torch.cat([column_mask_tensor(family((size, size), seed + i)) for i in range(batch)])
    maps = maps[None].expand(batch, -1, -1, -1).contiguous()
    y = MultiCoilMRI(maps, mask)(imgs)
    if rho > 0:
        y = y + rho * torch.view_as_complex(torch.randn(*y.shape, 2, generator=g)) * mask
    return {"y": y, "mask": mask, "maps": maps, "index": torch.arange(batch)}


def _data_size_and_noise(cfg: Any) -> tuple[int, float]:
    """Image size and training noise of ``cfg``'s data: the simulation settings, or a
    prepared set's manifest (``data.root``; its measured noise, what ``diffusion.rho: null``
    trains with). A prepared set that is not there is one error line."""
    from mrimsm.data.datasets import read_manifest
    from mrimsm.data.training_data import data_noise

    if cfg.data.simulated is not None:
        return cfg.data.simulated.size, cfg.data.simulated.rho
    manifest = read_manifest(Path(cfg.data.root).expanduser(), hint="prepare it first (the config's header says how)")
    return int(manifest["size"]), data_noise(manifest) or 0.0


def _setup(config: Path, coils: int, batch: Optional[int], device: str) -> tuple[Any, Any, torch.nn.Module, dict, int, int]:
    """``(config, training method, model on device, batch on device, image size, batch size)``."""
    from mrimsm.config import load_config
    from mrimsm.methods import training_method as get_method

    cfg = load_config(config)
    size, data_rho = _data_size_and_noise(cfg)
    bs = batch or cfg.train.batch_size
    rho = cfg.diffusion.rho if cfg.diffusion.rho is not None else data_rho
    data = synthetic_batch(bs, size, coils, rho)
    example = {k: v[0] for k, v in data.items()}
    method = get_method(cfg.method)(cfg, {"example": example, "rho": rho})
    torch.manual_seed(0)
    model = method.build_model(cfg).to(device)
    dev_batch = {k: v.to(device) for k, v in data.items()}
    return cfg, method, model, dev_batch, size, bs


def _clock(kind: str, device: str) -> Callable[[], float]:
    """The clock to time with: process CPU time, or wall time (after a CUDA sync)."""
    if kind == "process":
        return time.process_time
    if device.startswith("cuda"):
        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return wall
    return time.perf_counter


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The denoiser with its backbone compiled (the physics stays eager)."""
    model.backbone = torch.compile(model.backbone)
    return model


def bench_train(config: Path, steps: int, device: str, coils: int, batch: Optional[int], precision: str,
                clock: str = "wall", compile_: bool = False) -> dict:
    """Seconds per optimiser step of the trainer's loop body."""
    from mrimsm.train import EMA

    cfg, method, model, data, size, bs = _setup(config, coils, batch, device)
    if compile_:
        model = _compiled(model)
    ema = EMA(model, cfg.train.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    amp = torch.bfloat16 if precision == "bf16" else None
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step(i: int) -> None:
        data["step"] = i
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = method.loss(model, data, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
        opt.step()
        ema.update(model, i)

    t_first = time.perf_counter()
    step(0)  # warm-up (allocations, lazy imports, compilation)
    first_s = time.perf_counter() - t_first
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    now = _clock(clock, device)
    t0 = now()
    for i in range(steps):
        step(i + 1)
    dt = now() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"config": config.name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "size": size,
            "batch": bs, "precision": precision + (" + compile" if compile_ else ""), "steps_per_s": steps / dt,
            "images_per_s": steps * bs / dt, "first_step_s": first_s, "peak_mb": peak}


@torch.no_grad()
def bench_sample(config: Path, calls: int, device: str, coils: int, batch: int, precision: str,
                 clock: str = "wall", compile_: bool = False) -> dict:
    """Network evaluations per second of the sampler's denoiser call (eval, no_grad)."""
    from mrimsm.diffusion.denoiser import local_estimate
    from mrimsm.diffusion.method import batch_operator

    cfg, method, model, data, size, bs = _setup(config, coils, batch, device)
    model.eval()
    if compile_:
        model = _compiled(model)
    model.inference_dtype = torch.bfloat16 if precision == "bf16" else None
    op = batch_operator(data)
    y_t = op.apply_mask(data["y"])[None]  # (1, B, C, H, W): one stack of B local measurements
    t = torch.full((bs,), 500, dtype=torch.int64, device=device)
    local_estimate(model, op, y_t, t)  # warm-up
    now = _clock(clock, device)
    t0 = now()
    for _ in range(calls):
        local_estimate(model, op, y_t, t)
    dt = now() - t0
    return {"config": config.name, "size": size, "batch": bs,
            "precision": precision + (" + compile" if compile_ else ""), "nfe_per_s": calls * bs / dt}


def main(argv: Optional[list[str]] = None) -> None:
    ap = base_parser(__doc__, threads=None, threads_help="torch CPU threads (default: torch's own)", device=AUTO)
    ap.add_argument("--config", type=Path, action="append", help=f"config(s) (default: {', '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; 3 at 256 on CPU)")
    ap.add_argument("--calls", type=int, default=None, help="timed sampling calls (default 10; 3 at 256 on CPU)")
    ap.add_argument("--precision", action="append", choices=("fp32", "bf16"), help="default: both")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: train.batch_size)")
    ap.add_argument("--sample-batch", type=int, action="append", help="images per sampling call (default 1 and 4)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd backbones")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-sample", action="store_true")
    args = ap.parse_args(argv)
    setup_torch(args, cpu_default=None)
    configs = args.config or [REPO / c for c in DEFAULT_CONFIGS if (REPO / c).is_file()]
    precisions = args.precision or ["fp32", "bf16"]
    variants = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if args.compile else [])
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.clock} clock")
    if not args.no_train:
        print("\n| config | params (M) | image | batch | precision | steps/s | images/s | first step (s) | peak MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in configs:
            for prec, comp in variants:
                big = "256" in Path(c).name or "fastmri" in Path(c).name
                steps = args.steps or (3 if big and args.device == "cpu" else 10)
                r = bench_train(Path(c), steps, args.device, args.coils, args.batch, prec, args.clock, comp)
                print(f"| {r['config']} | {r['params_M']:.2f} | {r['size']} | {r['batch']} | {r['precision']} | "
                      f"{r['steps_per_s']:.3g} | {r['images_per_s']:.3g} | {r['first_step_s']:.1f} | "
                      f"{r['peak_mb']:.0f} |", flush=True)
    if not args.no_sample:
        print("\n| config | image | images per call | precision | NFE/s |")
        print("|---|---|---|---|---|")
        for c in configs:
            for b in args.sample_batch or [1, 4]:
                for prec, comp in variants:
                    big = "256" in Path(c).name or "fastmri" in Path(c).name
                    calls = args.calls or (3 if big and args.device == "cpu" else 10)
                    r = bench_sample(Path(c), calls, args.device, args.coils, b, prec, args.clock, comp)
                    print(f"| {r['config']} | {r['size']} | {r['batch']} | {r['precision']} | {r['nfe_per_s']:.3g} |",
                          flush=True)
    if args.device == "cpu":
        print("\n(CPU peak memory is the process's maximum resident set size.)")


if __name__ == "__main__":
    run_main(lambda: main() or 0)
