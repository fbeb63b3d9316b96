"""Training speed and peak memory of the MSM loss + optimiser step, per config.

Uses synthetic batches with the config's image size (multi-coil k-space of
random smooth images, smooth coil maps, paper-style masks), so no prepared
data is needed: the figure is the cost of one optimiser step of the trainer
(forward, backward, gradient clipping, AdamW, EMA), not of data loading.

    .venv/bin/python benchmarks/train_speed.py                       # tiny + paper scale on CPU
    .venv/bin/python benchmarks/train_speed.py --device cuda          # on a GPU
    .venv/bin/python benchmarks/train_speed.py --config configs/tiny.yaml --steps 20 --threads 1

Paper scale on a CPU runs only ``--paper-steps`` steps (default 2): it is slow.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


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


def bench(config: Path, steps: int, device: str, coils: int, size: int | None, batch: int | None) -> dict:
    from mrimsm.config import load_config
    from mrimsm.train import EMA, get_method

    cfg = load_config(config)
    size = size or (cfg.data.simulated.size if cfg.data.simulated is not None else 256)
    bs = batch or cfg.train.batch_size
    rho = cfg.diffusion.rho if cfg.diffusion.rho is not None else cfg.data.simulated.rho
    data = synthetic_batch(bs, size, coils, rho)
    example = {k: v[0] for k, v in data.items()}
    method = get_method(cfg.method)(cfg, {"example": example, "rho": rho})
    dev = torch.device(device)
    model = method.build_model(cfg).to(dev)
    ema = EMA(model, cfg.train.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    amp = torch.bfloat16 if (dev.type == "cuda" and cfg.train.amp) else None
    batch_dev = {k: v.to(dev) for k, v in data.items()}
    gen = torch.Generator(device=dev).manual_seed(0)

    def step(i: int) -> None:
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = method.loss(model, batch_dev, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
        opt.step()
        ema.update(model, i)

    step(0)  # warm-up (allocations, lazy imports)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "config": config.name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "size": size,
        "coils": coils,
        "batch": bs,
        "rho": rho,
        "steps_per_s": steps / dt,
        "peak_mb": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, action="append", help="config(s) (default: tiny + fastmri_r4)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps for small configs")
    ap.add_argument("--paper-steps", type=int, default=None, help="timed steps at 256 x 256 (CPU default 2)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--batch", type=int, default=None, help="override train.batch_size")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.config or [REPO / "configs" / "tiny.yaml", REPO / "configs" / "fastmri_r4.yaml"]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| config | params (M) | image | coils | batch | rho | steps/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for c in configs:
        from mrimsm.config import load_config

        big = load_config(c).data.simulated is None
        steps = args.steps
        if big:
            steps = args.paper_steps or (args.steps if args.device != "cpu" else 2)
        r = bench(Path(c), steps, args.device, args.coils, None, args.batch)
        print(
            f"| {r['config']} | {r['params_M']:.2f} | {r['size']} x {r['size']} | {r['coils']} | {r['batch']} | "
            f"{r['rho']:g} | {r['steps_per_s']:.3g} | {r['peak_mb']:.0f} |",
            flush=True,
        )
    if args.device == "cpu":
        print("(CPU peak memory is the process's maximum resident set size.)")


if __name__ == "__main__":
    main()
