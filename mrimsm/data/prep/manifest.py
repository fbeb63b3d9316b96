"""The ``manifest.json`` of a finished prep run: every parameter, the versions, the
inputs and what happened to each, the shards, counts and achieved accelerations."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mrimsm.data.prep.inputs import Inventory, skip
from mrimsm.data.prep.options import PrepOptions, mask_spec
from mrimsm.data.shards import FORMAT
from mrimsm.errors import MrimsmError

__all__ = ["NORMALIZATION", "collect_shards", "build_manifest"]

NORMALIZATION = (
    "one scale per volume: scale = 1 / max over the volume's slices of the root-sum-of-squares image "
    "of the ACS (fully sampled centre) columns common to the volume's masks; y = mask * (scale * z) + "
    "rho * mask * n. reconstructions map back to the input scale by dividing by `scale`."
)

#: The summary fields of a task that go into its manifest ``shards`` entry.
_SHARD_FIELDS = ("shard", "split", "name", "num_slices", "slices", "scale", "achieved_acceleration", "espirit",
                 "noise_measured", "noise_total")


def collect_shards(results: list[dict], inv: Inventory, raw_dir: Path, opts: PrepOptions,
                   warn: Callable[[str], None]) -> list[dict]:
    """The manifest's shard entries, by file name; a file whose worker failed is skipped
    (MrimsmError under ``--strict``, or when no shard is left)."""
    shards = []
    by_name = {e["file"]: e for e in inv.inputs}
    for res in sorted(results, key=lambda r: r["name"]):
        if res.get("fatal"):
            raise MrimsmError(f"{res['error']}; the other files' shards are complete: rerun the same command then")
        if "error" in res:
            skip(inv, Path(res["name"]), res["error"], opts, warn, by_name[res["name"]])
            continue
        if res.get("zero_slices"):
            warn(f"{res['name']}: skipped {len(res['zero_slices'])} all-zero slice(s): "
                 f"{', '.join(map(str, res['zero_slices']))}")
        shards.append({k: res[k] for k in _SHARD_FIELDS if k in res})
        if res.get("zero_slices"):
            shards[-1]["zero_slices"] = res["zero_slices"]
        if res.get("encoded_columns"):  # zero-padded edge columns: R counts the others
            shards[-1]["encoded_columns"] = res["encoded_columns"]
    if not shards:
        raise MrimsmError(f"no usable file in {raw_dir} ({len(inv.skipped)} skipped)")
    return shards


def _noise_summary(shards: list[dict]) -> dict:
    """The manifest's ``noise`` entry: the median over the shards that record it of
    ``noise_measured`` and ``noise_total`` (per real component, normalized units;
    ``None`` when no shard does), and how they were measured."""
    def median(key: str) -> Optional[float]:
        values = [float(s[key]) for s in shards if s.get(key) is not None]
        return float(np.median(values)) if values else None

    return {"measured": median("noise_measured"), "total": median("noise_total"),
            "estimator": "mrimsm.data.noise.estimate_noise_std (empty readout rows of the raw k-space)"}


def _versions() -> dict:
    """The installed versions of mrimsm and the libraries that shape the data."""
    import importlib.metadata as md

    out = {}
    for pkg in ("mrimsm", "numpy", "torch", "h5py", "sigpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _counts(inv: Inventory, shards: list[dict], num_resumed: int) -> dict:
    return {
        "files_found": len(inv.inputs),
        "files_used": len(shards),
        "files_skipped": len(inv.skipped),
        "files_filtered": len(inv.filtered),
        "files_resumed": num_resumed,
        "zero_slices_skipped": sum(len(s.get("zero_slices", [])) for s in shards),
        "slices": {sp: sum(s["num_slices"] for s in shards if s["split"] == sp) for sp in ("train", "val")},
    }


def build_manifest(raw_dir: Path, opts: PrepOptions, params_hash: str, inv: Inventory, shards: list[dict],
                   num_resumed: int) -> dict:
    """The ``manifest.json`` of a finished run (the format of :mod:`mrimsm.data.prep`)."""
    accels = [a for s in shards for a in s["achieved_acceleration"]]
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "raw_dir": str(raw_dir.resolve()),
        "params": opts.params(),
        "params_hash": params_hash,
        "rho": float(opts.noise_rho),
        "noise": _noise_summary(shards),
        "size": int(opts.size),
        "mask": mask_spec(opts),
        "normalization": NORMALIZATION,
        "versions": _versions(),
        "inputs": inv.inputs,
        "skipped": inv.skipped,
        "filtered": inv.filtered,
        "shards": shards,
        "counts": _counts(inv, shards, num_resumed),
        "achieved_acceleration": {
            "mean": float(np.mean(accels)),
            "min": float(np.min(accels)),
            "max": float(np.max(accels)),
            "overall": float(len(accels) * opts.size / sum(opts.size / a for a in accels)),
        },
        "complete": True,
    }
