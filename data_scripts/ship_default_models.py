"""Export the trained default runs as the shipped inference-only models.

    .venv/bin/python data_scripts/ship_default_models.py \
        --msm runs/default_msm --ssdu runs/default_ssdu --images runs/default_images \
        --msm256 runs/default_msm256

writes mrimsm/assets/default_msm.pt, default_ssdu.pt and default_images.pt (EMA weights,
config, operator/mask settings; no optimizer; the image prior in float16), copies each
run's config and training log beside them (``*.config.yaml``, ``*.log.jsonl``) for
provenance, and writes each run's resumable state (``last.pt``) to
``training/<name>_last.pt`` so that a later run can continue it (training/README.md):
compact (bf16 weights, EMA and AdamW moments; the moments are dropped and re-warmed on
resume when the state would exceed 20 MiB), see :func:`mrimsm.checkpoint.compact_training_state`.
``default_msm256`` (configs/default_msm256.yaml) is the 256 x 256 brain prior and
``default_ssdu256`` (configs/default_ssdu256.yaml) the SSDU baseline on its data.
The runs come from ``mrimsm train configs/default_msm_brains_finetune.yaml --out runs/msm64_brains``
(continuing the noisy-loss stage of ``configs/default_msm_noisy.yaml`` on the brain set),
``mrimsm train --method ssdu configs/default_ssdu_brains.yaml --out runs/ssdu64_brains`` and
``mrimsm train configs/ffhq_tiny.yaml --data data/images/train --out runs/default_images``
(each resumable with ``--resume``).

``--in-progress RUN_DIR`` keeps a run that is not shipped (yet) resumable across sessions:
its compact state goes to ``training/in_progress/<run name>_last.pt`` and nothing else is
written (``mkdir -p RUN_DIR && cp training/in_progress/NAME_last.pt RUN_DIR/last.pt`` and
``mrimsm train CONFIG --out RUN_DIR --resume`` continue it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mrimsm.checkpoint import compact_training_state, export_for_inference
from mrimsm.errors import MrimsmError
from mrimsm.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "mrimsm" / "assets"
TRAINING = REPO / "training"
#: resumable states of runs that continue across sessions but are not shipped (training/README.md)
IN_PROGRESS = TRAINING / "in_progress"

#: name -> (config file, float16 weights, data.root written into the shipped config)
MODELS = {
    "default_msm": ("configs/default_msm_brains_finetune.yaml", False, None),
    "default_ssdu": ("configs/default_ssdu_brains.yaml", False, None),
    "default_images": ("configs/ffhq_tiny.yaml", True, "data/images/train"),
    "default_msm256": ("configs/default_msm256.yaml", True, None),
    "default_ssdu256": ("configs/default_ssdu256.yaml", False, None),
}

#: the most a resumable state under training/ may weigh
MAX_STATE_BYTES = 20 * 2**20


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def ship(name: str, run: Path, keep_state: bool = True) -> Path:
    config, half, data_root = MODELS[name]
    dst = export_for_inference(
        run, ASSETS / f"{name}.pt", {"run": run.name, "config": config}, half=half, data_root=data_root
    )
    for src, suffix in ((run / "config.yaml", "config.yaml"), (run / "log.jsonl", "log.jsonl")):
        if src.is_file():
            _copy(src, ASSETS / f"{name}.{suffix}")
    if keep_state and (run / "last.pt").is_file():
        keep_state_of(run, TRAINING / f"{name}_last.pt")
        (IN_PROGRESS / f"{run.resolve().name}_last.pt").unlink(missing_ok=True)  # shipped: no longer in progress
    return dst


def keep_state_of(run: Path, dst: Path) -> Path:
    """``run/last.pt`` as a compact resumable state at ``dst``: bf16 AdamW moments, or
    none (re-warmed on resume) when that would exceed :data:`MAX_STATE_BYTES`. It is
    written beside ``dst`` and renamed over it only once it fits, so a refused state
    leaves the earlier ``dst`` as it was."""
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        compact_training_state(run / "last.pt", tmp)
        if tmp.stat().st_size > MAX_STATE_BYTES:
            compact_training_state(run / "last.pt", tmp, optimizer="drop")
        if tmp.stat().st_size > MAX_STATE_BYTES:
            raise SystemExit(f"error: {run / 'last.pt'} stays over {MAX_STATE_BYTES / 2**20:.0f} MiB even without "
                             "optimizer moments; not kept")
        return tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--msm", type=Path, help="MSM run directory")
    ap.add_argument("--ssdu", type=Path, help="SSDU run directory")
    ap.add_argument("--images", type=Path, help="natural-image MSM run directory")
    ap.add_argument("--msm256", type=Path, help="256 x 256 MSM run directory (configs/default_msm256.yaml)")
    ap.add_argument("--ssdu256", type=Path, help="256 x 256 SSDU run directory (configs/default_ssdu256.yaml)")
    ap.add_argument("--no-state", action="store_true", help="do not copy the resumable states to training/")
    ap.add_argument("--in-progress", type=Path, action="append", default=[], metavar="RUN_DIR",
                    help="keep only this unshipped run's resumable state, as training/in_progress/"
                         "<run name>_last.pt (repeatable; nothing is shipped for it)")
    args = ap.parse_args()
    for run in args.in_progress:
        if not (run / "last.pt").is_file():
            raise SystemExit(f"error: no last.pt in {run}")
        state = keep_state_of(run, IN_PROGRESS / f"{run.resolve().name}_last.pt")
        print(f"kept {state} ({state.stat().st_size / 1e6:.1f} MB)")
    for name, run in (("default_msm", args.msm), ("default_ssdu", args.ssdu), ("default_images", args.images),
                      ("default_msm256", args.msm256), ("default_ssdu256", args.ssdu256)):
        if run is None:
            continue
        dst = ship(name, run, keep_state=not args.no_state)
        print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    try:
        main()
    except MrimsmError as exc:  # a run directory whose last.pt is not a resumable training state, ...
        raise SystemExit(f"error: {exc}") from None
