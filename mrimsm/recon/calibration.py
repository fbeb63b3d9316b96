"""A prior's split-conformal calibration: made from fully sampled scans
(:func:`calibrate`), stored beside the checkpoint (:func:`calibration_path`), and turned
into the pixel-wise ``error_bound`` that ``recon`` writes beside ``uncertainty``
(:func:`error_bound_for`).

What the bound means: for a slice drawn like the calibration slices, reconstructed with
the same checkpoint, solver settings and acceleration, at least ``coverage`` of the pixels
inside the object (:func:`mrimsm.uncertainty.object_support`) have
``|recon - reference| <= error_bound``, on average over slices (pixel-marginal coverage,
:mod:`mrimsm.uncertainty`). The reference is the one the calibration used, recorded in the
file: a fully sampled scan's ``reconstruction_rss`` (which carries the scan's noise, so
the bound also covers that noise) or, for the shipped priors, the noise-free object of a
simulation. Outside the object the bound is written too but nothing is claimed there.

File format (JSON, ``"format": "mrimsm-calibration/1"``)::

    {"format", "created", "mrimsm", "checkpoint": {"file", "sha256"},
     "settings": {solver settings the bound holds for}, "reference": text,
     "support": text, "floor": "slice",
     "entries": [{"accel", "achieved_accel", "files", "slices", "pixels",
                  "levels": {"0.50": q, ..., "0.99": q}, "metrics": {...}}]}
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from mrimsm.errors import MrimsmError

__all__ = [
    "CALIBRATION_FORMAT", "DEFAULT_COVERAGE", "SETTINGS_KEYS", "BoundChoice", "calibration_path",
    "load_calibration", "read_calibration", "solver_settings", "settings_differ", "choose_bound", "error_bound_for", "calibrate", "write_calibration",
    "merge_calibration", "made_for",
]

CALIBRATION_FORMAT = "mrimsm-calibration/1"

#: The coverage ``recon`` writes a bound at when a calibration exists and none is asked for.
DEFAULT_COVERAGE = 0.9

#: The solver settings a calibration holds for (those that change the samples' spread).
SETTINGS_KEYS = ("steps", "w", "samples", "eta", "dc", "dc_schedule", "dc_lambda", "dc_iters", "init", "t0",
                 "bootstrap")

#: The value of a key of :data:`SETTINGS_KEYS` that a calibration written before the key
#: existed was made with.
SETTINGS_BEFORE_KEY = {"bootstrap": 0.0}

#: Two accelerations are the same family when they differ by less than this.
ACCEL_TOLERANCE = 1e-3


def calibration_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """Where a checkpoint's calibration lives: ``C.pt`` -> ``C.calibration.json`` beside it."""
    p = Path(checkpoint)
    return p.with_name((p.name[:-3] if p.name.endswith(".pt") else p.name) + ".calibration.json")


def _check(cal: Any, path: Path) -> dict:
    def bad(what: str) -> MrimsmError:
        return MrimsmError(f"{path}: not a usable calibration ({what}); make it again with mrimsm calibrate")

    if not isinstance(cal, dict) or cal.get("format") != CALIBRATION_FORMAT:
        raise bad(f"format is not {CALIBRATION_FORMAT}")
    if not isinstance(cal.get("entries"), list) or not cal["entries"]:
        raise bad("no entries")
    if not isinstance(cal.get("checkpoint"), dict) or not isinstance(cal.get("settings"), dict):
        raise bad("no checkpoint or settings")
    for entry in cal["entries"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("levels"), dict) or not entry["levels"]:
            raise bad("an entry without levels")
        if not isinstance(entry.get("accel"), (int, float)):
            raise bad("an entry without accel")
        for key, q in entry["levels"].items():
            try:
                level = float(key)
            except ValueError:
                raise bad(f"level {key!r}") from None
            if not (0 < level < 1) or not isinstance(q, (int, float)) or not (q >= 0):
                raise bad(f"level {key!r}: {q!r}")
    return cal


def load_calibration(checkpoint: Union[str, os.PathLike]) -> Optional[dict]:
    """The calibration beside ``checkpoint``, checked; ``None`` when there is none.
    MrimsmError (one line) for a file that exists but is not a calibration."""
    path = calibration_path(checkpoint)
    return read_calibration(path) if path.is_file() else None


def read_calibration(path: Union[str, os.PathLike]) -> dict:
    """The calibration file at ``path``, checked. MrimsmError (one line) when it cannot be
    read or is not a calibration."""
    path = Path(path)
    try:
        cal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MrimsmError(f"{path}: cannot read the calibration ({exc.__class__.__name__}); "
                          "make it again with mrimsm calibrate") from None
    return _check(cal, path)


@dataclass(frozen=True)
class BoundChoice:
    """The calibrated scale a reconstruction's bound uses, or why there is none.

    Attributes:
        scale: the conformal scale ``q`` (``None``: no bound, see ``reason``).
        level: the stored level used (the smallest >= the asked coverage).
        accel: the calibration entry's acceleration.
        path: the calibration file.
        reason: why no bound can be written (``None`` when one can).
    """

    scale: Optional[float]
    level: Optional[float] = None
    accel: Optional[float] = None
    path: Optional[Path] = None
    reason: Optional[str] = None


def made_for(cal: Mapping, checkpoint: Union[str, os.PathLike]) -> bool:
    """Whether the calibration ``cal`` was made for the checkpoint file ``checkpoint`` (its SHA-256)."""
    from mrimsm.utils import file_sha256

    return cal.get("checkpoint", {}).get("sha256") == file_sha256(checkpoint)


def settings_differ(cal: Mapping, settings: Mapping) -> list[str]:
    """``"key old -> new"`` for each solver setting where ``settings`` differ from the calibration's."""
    saved = {**SETTINGS_BEFORE_KEY, **cal.get("settings", {})}
    return [f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in SETTINGS_KEYS
            if k in saved and k in settings and saved[k] != settings[k]]


def choose_bound(checkpoint: Union[str, os.PathLike], accel: Optional[float], achieved_accel: float,
                 settings: Mapping[str, Any], coverage: float = DEFAULT_COVERAGE) -> BoundChoice:
    """Which calibrated scale a reconstruction with ``checkpoint`` at ``accel`` (``None``:
    the file's own mask; its ``achieved_accel`` is matched instead, within 10 %) and solver
    ``settings`` gets at ``coverage``; a :class:`BoundChoice` with ``reason`` when none fits
    (no calibration, another checkpoint, other settings, an uncalibrated acceleration, a
    coverage above the stored levels)."""
    path = calibration_path(checkpoint)
    cal = load_calibration(checkpoint)
    cmd = f"mrimsm calibrate --checkpoint {checkpoint} SCANS..."
    if cal is None:
        return BoundChoice(None, path=path, reason=f"{Path(checkpoint).name} has no calibration ({path.name}; {cmd})")
    if not made_for(cal, checkpoint):
        return BoundChoice(None, path=path, reason=f"{path.name} was made for another checkpoint ({cmd})")
    differ = settings_differ(cal, settings)
    if differ:
        return BoundChoice(None, path=path, reason=f"{path.name} holds for other solver settings ({', '.join(differ)})")
    entries = cal["entries"]
    if accel is not None:
        match = [e for e in entries if abs(float(e["accel"]) - float(accel)) < ACCEL_TOLERANCE]
    else:
        match = sorted((e for e in entries if e.get("achieved_accel")
                        and abs(float(e["achieved_accel"]) / achieved_accel - 1) <= 0.1),
                       key=lambda e: abs(float(e["achieved_accel"]) - achieved_accel))[:1]
    if not match:
        have = ", ".join(f"{float(e['accel']):g}" for e in entries)
        asked = f"R = {accel:g}" if accel is not None else f"the file's own mask (R {achieved_accel:.2f})"
        return BoundChoice(None, path=path, reason=f"{path.name} has no entry for {asked} (calibrated: R = {have})")
    entry = match[0]
    levels = sorted((float(k), float(v)) for k, v in entry["levels"].items())
    above = [(lv, q) for lv, q in levels if lv >= float(coverage) - 1e-9]
    if not above:
        return BoundChoice(None, path=path, reason=f"{path.name} stores levels up to {levels[-1][0]:.2f}, "
                                                   f"not {coverage:g}")
    level, q = above[0]
    if not math.isfinite(q):
        return BoundChoice(None, path=path, reason=f"{path.name}: too few calibration pixels for {level:.2f}")
    return BoundChoice(q, level=level, accel=float(entry["accel"]), path=path)


def error_bound_for(std: np.ndarray, choice: BoundChoice) -> np.ndarray:
    """``(S, h, w)`` float32: the bound ``q (std + floor)`` of each slice's std map."""
    from mrimsm.uncertainty import error_bound

    return error_bound(std, {"scale": choice.scale, "floor": "slice"})


def _checkpoint_for(volume: Any, opts: Mapping[str, Any]) -> Path:
    """The MSM checkpoint a volume gets: ``--checkpoint``, else the shipped prior of its size."""
    from mrimsm.diffusion import shipped

    if opts.get("checkpoint"):
        return Path(opts["checkpoint"])
    return Path(shipped.choose_shipped_prior(tuple(volume.kspace.shape[-2:])).path)


def require_calibration(volume: Any, opts: Mapping[str, Any]) -> None:
    """For an explicit ``--coverage``: MrimsmError (before any reconstruction) unless the
    checkpoint this volume gets has a calibration for its acceleration. Whether the solver
    settings match is known after the run (a mismatch is a note, no bound)."""
    path = _checkpoint_for(volume, opts)
    choice = choose_bound(path, volume.accel, volume.achieved_accel, {}, float(opts["coverage"]))
    if choice.scale is None:
        raise MrimsmError(f"--coverage {float(opts['coverage']):g}: no error bound can be written: {choice.reason}")


def attach_error_bound(volume: Any, result: Any, coverage: Optional[float]) -> None:
    """Set ``result.error_bound`` / ``result.bound_info`` for a result with an uncertainty
    map and a checkpoint: the calibrated bound at ``coverage`` (``None``: :data:`DEFAULT_COVERAGE`),
    or ``bound_info = {"reason": ...}`` when no calibration fits."""
    checkpoint = result.info.get("checkpoint")
    if result.uncertainty is None or not checkpoint:
        return
    level = DEFAULT_COVERAGE if coverage is None else float(coverage)
    choice = choose_bound(checkpoint, volume.accel, volume.achieved_accel, result.info, level)
    if choice.scale is None:
        result.bound_info = {"reason": choice.reason}
        return
    from mrimsm.uncertainty import OBJECT_LEVEL

    result.error_bound = error_bound_for(result.uncertainty, choice)
    result.bound_info = {
        "coverage": level, "level": choice.level, "scale": choice.scale, "accel": choice.accel,
        "calibration": choice.path.name, "floor": "slice",
        "means": f"on slices like the calibration's, this share of the pixels inside the object "
                 f"(reference >= {OBJECT_LEVEL:.0%} of its slice maximum) has |error| <= error_bound",
    }


def solver_settings(info: Mapping[str, Any]) -> dict:
    """The :data:`SETTINGS_KEYS` a reconstruction's info reports."""
    return {k: info[k] for k in SETTINGS_KEYS if k in info}


def calibrate(
    files: Sequence[Union[str, os.PathLike]],
    accels: Sequence[float],
    options: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    reference_for: Optional[Callable[[Path, Any], np.ndarray]] = None,
    reference_text: str = "reconstruction_rss of each fully sampled file",
    progress: Any = None,
    on_volume: Optional[Callable[[str], None]] = None,
) -> dict:
    """Reconstruct fully sampled ``files`` with MSM at each of ``accels`` and make the
    calibration (the format in the module doc).

    Args:
        files: fully sampled fastMRI multi-coil files (retrospectively undersampled here,
            with masks seeded by ``seed``; keep them apart from validation and test scans).
        accels: accelerations to calibrate, one entry each.
        options: recon's method options (``checkpoint``, ``samples``, ``steps``, ``device``...).
        reference_for: ``reference_for(path, volume) -> (S, h, w)`` float32 instead of the
            file's ``reconstruction_rss`` (e.g. a simulation's noise-free object).
        reference_text: what the reference is, stored in the file.
        progress: recon's progress factory.
        on_volume: called with a line per volume done.

    Returns:
        The calibration dict (write it with :func:`write_calibration`).
    """
    from mrimsm import __version__
    from mrimsm.diffusion import shipped
    from mrimsm.recon.methods import get_method
    from mrimsm.recon.run import run_method
    from mrimsm.recon.volume import prepare_volume
    from mrimsm.uncertainty import OBJECT_LEVEL, calibration_metrics, conformal_table, object_support
    from mrimsm.utils import file_sha256

    if not files:
        raise MrimsmError("calibrate needs at least one fully sampled scan")
    opts = dict(options or {})
    opts.setdefault("seed", seed)
    method = get_method("msm").build(opts)
    checkpoint: Optional[str] = opts.get("checkpoint")
    entries = []
    settings: dict = {}
    for accel in accels:
        errors, stds, supports, names, achieved = [], [], [], [], []
        for f in files:
            volume = prepare_volume(f, accel, seed, progress=progress)
            if volume.mask_source == "file":
                raise MrimsmError(f"{f}: carries its own undersampling mask; calibrate needs fully sampled scans")
            ref = volume.reference if reference_for is None else reference_for(Path(f), volume)
            if ref is None:
                raise MrimsmError(f"{f}: no {volume.reference_name} to calibrate against")
            result = run_method(volume, "msm", opts, progress, method=method)
            if result.uncertainty is None:
                raise MrimsmError("calibrate needs --samples 2 or more (the std of the samples is what is calibrated)")
            used = result.info.get("checkpoint")
            if checkpoint is None:
                checkpoint = used
            elif used is not None and Path(used).resolve() != Path(checkpoint).resolve():
                raise MrimsmError(f"{f}: its size gets the shipped prior {Path(used).name}, not {Path(checkpoint).name}; "
                                  "calibrate scans of one size (or pass --checkpoint)")
            settings = solver_settings(result.info)
            ref = np.asarray(ref, dtype=np.float32)
            for i in range(len(ref)):
                errors.append(result.reconstruction[i] - ref[i])
                stds.append(result.uncertainty[i])
                supports.append(object_support(ref[i]))
            names.append(Path(f).name)
            achieved.append(volume.achieved_accel)
            if on_volume is not None:
                on_volume(f"{Path(f).name} R {accel:g}: {len(ref)} slices")
        table = conformal_table(errors, stds, supports)
        metrics = calibration_metrics(np.stack(errors), np.stack(stds), np.stack(supports)).as_dict()
        entries.append({
            "accel": float(accel), "achieved_accel": float(np.mean(achieved)), "files": names,
            "slices": len(errors), "pixels": int(sum(int(s.sum()) for s in supports)),
            "levels": table, "metrics": metrics,
        })
    assert checkpoint is not None
    return {
        "format": CALIBRATION_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mrimsm": __version__,
        "checkpoint": {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint),
                       "shipped": any(Path(p.path).resolve() == Path(checkpoint).resolve()
                                      for p in shipped.SHIPPED_PRIORS)},
        "settings": settings,
        "seed": int(seed),
        "reference": reference_text,
        "support": f"pixels where the reference is at least {OBJECT_LEVEL:.0%} of its slice's maximum",
        "floor": "slice",
        "entries": entries,
    }


#: Top-level keys two calibrations must agree on to be merged (when both have them): what
#: their bounds mean (reference, support, floor) and how their slices were drawn.
MERGE_KEYS = ("reference", "support", "floor", "seed", "simulation", "calibration_slices")


def merge_calibration(old: Mapping, new: Mapping) -> dict:
    """``new`` with the entries of ``old`` for the accelerations ``new`` does not calibrate
    (sorted by acceleration): adding an acceleration to an existing calibration.

    MrimsmError (one line) unless both hold for the same checkpoint (SHA-256), the same
    solver settings and the same :data:`MERGE_KEYS`: a file's bounds then all mean one thing.
    """
    old_sha, new_sha = old.get("checkpoint", {}).get("sha256"), new.get("checkpoint", {}).get("sha256")
    if old_sha != new_sha:
        raise MrimsmError(f"it is the calibration of another checkpoint ({old.get('checkpoint', {}).get('file')}, "
                          f"sha256 {str(old_sha)[:12]}, not {str(new_sha)[:12]})")
    if differ := settings_differ(old, new.get("settings", {})) + settings_differ(new, old.get("settings", {})):
        raise MrimsmError(f"it holds for other solver settings ({'; '.join(dict.fromkeys(differ))})")
    for key in MERGE_KEYS:
        if key in old and key in new and old[key] != new[key]:
            raise MrimsmError(f"its {key} differs ({old[key]!r} -> {new[key]!r})")
    mine = [float(e["accel"]) for e in new["entries"]]
    kept = [e for e in old["entries"] if all(abs(float(e["accel"]) - a) >= ACCEL_TOLERANCE for a in mine)]
    return {**new, "entries": sorted([*kept, *new["entries"]], key=lambda e: float(e["accel"]))}


def write_calibration(cal: dict, path: Union[str, os.PathLike]) -> Path:
    """Write ``cal`` as JSON atomically; returns the path."""
    from mrimsm.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(cal, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path
