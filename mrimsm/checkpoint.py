"""Checkpoint format: one ``torch.save`` dict, written atomically, loaded with
``weights_only=True`` (no pickled code).

Keys of a checkpoint (``FORMAT_VERSION`` 1):

=================  ============================================================
``format``         ``"mrimsm-checkpoint"``
``format_version`` int
``mrimsm_version`` the package version that wrote it
``method``         training method name (``"msm"``, ``"ssdu"``, ...)
``step``           number of optimiser steps taken
``config``         the full config as a plain dict (:meth:`Config.to_dict`)
``meta``           the method's ``checkpoint_meta``: operator and mask settings
                   (may hold tensors, e.g. reference coil maps)
``model``          ``state_dict`` of the trained module
``ema``            ``state_dict`` of its exponential moving average
``optimizer``      optimiser ``state_dict`` (``None`` in an export)
``scaler``         AMP grad-scaler state or ``None``
``rng``            per-rank RNG states: ``{"ranks": [{"python", "numpy",
                   "torch", "cuda", "sampler"}, ...]}``
=================  ============================================================

A run directory holds ``last.pt`` (the newest checkpoint, replaced atomically)
and, with ``train.keep_every``, ``checkpoints/step_XXXXXXX.pt``. Loading checks the
CRC-32 that torch's zip format stores for every record first, so a file whose bytes
changed after it was written is refused (:func:`verify_checkpoint_file`).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from mrimsm import __version__
from mrimsm.errors import MrimsmError
from mrimsm.utils import atomic_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LAST_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "verify_checkpoint_file",
    "kept_checkpoints",
    "resolve_checkpoint_path",
    "load_state_checked",
    "compact_training_state",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT = "mrimsm-checkpoint"
FORMAT_VERSION = 1
LAST_NAME = "last.pt"
_REQUIRED = ("format", "format_version", "method", "step", "config", "meta", "model", "ema")


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write a checkpoint atomically (temp file + rename).

    ``fields`` are the keys of the table in the module docstring except the
    three format keys, which are filled in here.
    """
    missing = [k for k in _REQUIRED[3:] if k not in fields]
    if missing:
        raise ValueError(f"checkpoint fields missing: {missing}")
    obj = {"format": FORMAT, "format_version": FORMAT_VERSION, "mrimsm_version": __version__}
    obj.update(fields)
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (full disk) so
            if "inline_container" not in str(exc) and "PytorchStreamWriter" not in str(exc):
                raise
            free = shutil.disk_usage(tmp.parent).free
            raise MrimsmError(f"could not write the checkpoint {path} ({free / 2**20:.1f} MiB free on its disk); "
                              f"nothing was written there") from None
    return path


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (-> its ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST_NAME
        if not p.is_file():
            raise MrimsmError(f"{path} is a directory without a checkpoint ({LAST_NAME})")
    elif not p.exists():
        raise MrimsmError(f"checkpoint {str(path)!r} does not exist")
    return p


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Check the CRC-32 of every record of a checkpoint (torch's zip format stores one per
    record; ``torch.load`` does not check them, so flipped bytes in a tensor loaded as
    silently wrong weights). Reading the file once costs about as much as loading it
    (20 ms for 9 MB).

    Raises:
        MrimsmError: (one line) naming the file and saying it is corrupt; for a run's
        ``last.pt``, naming the newest intact checkpoint the run kept
        (``checkpoints/step_*.pt``, :func:`kept_checkpoints`) to resume from instead.
        A file that is no zip archive at all (truncated, foreign) is left to
        :func:`load_checkpoint`'s own message.
    """
    p = Path(path)
    try:
        archive = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip archive: torch.load says what it is
    try:
        with archive:
            bad = archive.testzip()
        why = None if bad is None else f"the checksum of its record {bad.split('/', 1)[-1]!r} does not match"
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
        why = f"its records do not read back ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if why is not None:
        raise MrimsmError(f"{p} is corrupt: {why} (its bytes changed after it was written); {_instead(p)}")


def kept_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a run kept (``run_dir/checkpoints/step_*.pt``, ``train.keep_every``),
    newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(folder.glob("step_*.pt"), key=lambda q: q.name, reverse=True)


def _instead(corrupt: Path) -> str:
    """What to do instead of loading the corrupt ``corrupt``."""
    if corrupt.name != LAST_NAME:
        return "use another copy of it"
    for kept in kept_checkpoints(corrupt.parent):
        try:
            verify_checkpoint_file(kept)
        except MrimsmError:
            continue
        return (f"the newest intact checkpoint this run kept is {kept}: copy it over {corrupt} "
                f"(cp {kept} {corrupt}) to resume from it")
    return "this run kept no other checkpoint (train.keep_every); use another copy of it or train again"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint; a truncated, corrupt (:func:`verify_checkpoint_file`)
    or foreign file -> MrimsmError."""
    p = resolve_checkpoint_path(path)
    verify_checkpoint_file(p)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, KeyError):
        raise MrimsmError(f"{p} is truncated or not an mrimsm checkpoint") from None
    except Exception as exc:  # the unpickler raises a variety of errors on foreign files
        raise MrimsmError(f"{p} is not a readable mrimsm checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MrimsmError(f"{p} is not an mrimsm checkpoint")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise MrimsmError(
            f"{p} has checkpoint format {obj['format_version']}, newer than this mrimsm reads ({FORMAT_VERSION})"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise MrimsmError(f"{p} is an incomplete checkpoint (missing {', '.join(missing)})")
    return obj


def load_state_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` with a one-line error when the shapes differ."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise MrimsmError(
            f"{source} holds a model of another shape than the config describes ({what}, "
            f"{len(missing)} missing and {len(unexpected)} unexpected tensors)"
        )
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise MrimsmError(
                f"{source} holds a model of another shape than the config describes "
                f"({k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} here)"
            )
    module.load_state_dict(state)


def _bf16(state: Any) -> Any:
    """Floating-point tensors of a (nested) state as bfloat16; everything else as is."""
    if isinstance(state, torch.Tensor):
        return state.detach().to(torch.bfloat16).clone() if state.is_floating_point() and state.dim() else state
    if isinstance(state, Mapping):
        return {k: _bf16(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_bf16(v) for v in state)
    return state


def compact_training_state(
    src: str | os.PathLike, dst: str | os.PathLike, optimizer: str = "bf16"
) -> Path:
    """Write a small resumable copy of a training checkpoint.

    Weights and EMA are stored as bfloat16; the optimizer moments as bfloat16
    (``optimizer="bf16"``) or dropped (``"drop"``: :func:`mrimsm.train.train`
    then re-warms a fresh AdamW on resume). ``meta``'s large tensors
    (``reference_maps``, ``train_masks``) are dropped: training recomputes the
    meta from its data. Step, config, RNG and data-order state are kept, so
    ``mrimsm train --resume`` continues from it; loading casts the weights and
    moments back to the model's float32 (bf16 rounding: relative 2^-9).

    For a 2.35 M-parameter network: about 19 MB with bf16 moments, 9.4 MB without.
    """
    if optimizer not in ("bf16", "drop"):
        raise ValueError("optimizer must be bf16 or drop")
    src_path = resolve_checkpoint_path(src)
    dst = Path(dst)
    if dst.resolve() == src_path.resolve():
        raise MrimsmError("the compact state must not overwrite its source")
    ckpt = load_checkpoint(src_path)
    if ckpt.get("optimizer") is None:
        raise MrimsmError(f"{src_path} is not a resumable training state (no optimizer)")
    out = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "mrimsm_version")}
    out["model"] = _bf16(ckpt["model"])
    out["ema"] = _bf16(ckpt["ema"])
    out["meta"] = {k: v for k, v in dict(ckpt["meta"]).items() if k not in ("reference_maps", "train_masks")}
    if optimizer == "bf16":
        opt = dict(ckpt["optimizer"])
        opt["state"] = {k: {n: (_bf16(t) if n != "step" else t) for n, t in st.items()}
                        for k, st in opt["state"].items()}
        out["optimizer"] = opt
    else:
        out["optimizer"] = None
    out["compact"] = {"weights": "bfloat16", "optimizer": "bfloat16" if optimizer == "bf16" else "dropped"}
    return save_checkpoint(dst, **out)


# -- RNG state ------------------------------------------------------------------


def capture_rng_state(sampler_state: Optional[dict] = None) -> dict:
    """Python, NumPy, torch (and CUDA) generator states as checkpoint-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": dict(sampler_state or {}),
    }
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].cpu().numpy().astype(np.uint32),  # cpu(): a state loaded with map_location="cuda"
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def export_for_inference(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    extra_meta: Optional[dict] = None,
    half: bool = False,
    data_root: Optional[str] = None,
) -> Path:
    """Write a small inference-only copy of a training checkpoint.

    Keeps the format keys, method, step, config and meta, and the EMA weights
    (stored once, under both ``model`` and ``ema``, so :func:`load_checkpoint`
    accepts it); drops the optimizer, grad scaler and RNG states, so it cannot
    be resumed. This is how the shipped default models are made.

    Args:
        src: training checkpoint (file or run directory).
        dst: output file (written atomically; must differ from ``src``).
        extra_meta: merged into ``meta["export"]`` (e.g. provenance notes).
        half: store floating-point weights as float16 (loading casts them back
            to the model's float32); halves the file.
        data_root: replaces ``data.root`` in the stored config (e.g. a
            machine-specific training path).
    """
    src_path = resolve_checkpoint_path(src)
    dst = Path(dst)
    if dst.resolve() == src_path.resolve():
        raise MrimsmError("the exported checkpoint must not overwrite its source")
    ckpt = load_checkpoint(src_path)
    ema = {
        k: (v.half() if half and v.is_floating_point() else v).detach().clone().contiguous()
        for k, v in ckpt["ema"].items()
    }
    meta = dict(ckpt["meta"])
    meta["export"] = {"source_step": int(ckpt["step"]), "inference_only": True, **(extra_meta or {})}
    config = dict(ckpt["config"])
    if data_root is not None:
        config["data"] = dict(config.get("data") or {}, root=data_root)
    fields = {k: ckpt[k] for k in ("method", "step") if k in ckpt}
    fields.update(config=config, meta=meta, model=ema, ema=ema)
    return save_checkpoint(dst, **fields)
