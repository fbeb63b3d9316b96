"""The options of ``mrimsm recon``: parsing the command's text values, and
:class:`ReconOptions`, what :func:`~mrimsm.recon.reconstruct_file` and
:func:`~mrimsm.recon.reconstruct_directory` share."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from mrimsm.errors import MrimsmError
from mrimsm.limits import MAX_ITERATIONS, MAX_MASKS_PER_STEP, SEED_LIMIT, parse_accel
from mrimsm.recon.methods import default_method
from mrimsm.recon.progress import Progress

__all__ = ["parse_accel", "NUMERIC_OPTIONS", "parse_number", "parse_options", "ReconOptions"]


#: Numeric options of ``mrimsm recon``: ``key -> (flag, type, low, high, low_open)``
#: (``None`` = unbounded). The command takes them as text and calls
#: :func:`parse_options`, so a bad value is a one-line error, never a usage block.
#: Ranges that depend on a method (``eta``, ``dc_step``, ``t0``, ``dc_lambda``) are left to its factory.
NUMERIC_OPTIONS: dict[str, tuple] = {
    "seed": ("--seed", int, 0, SEED_LIMIT - 1, False),
    "center_fraction": ("--center-fraction", float, 0.0, 1.0, True),
    "cs_lambda": ("--cs-lambda", float, 0.0, None, False),
    "cs_iters": ("--cs-iters", int, 1, MAX_ITERATIONS, False),
    "steps": ("--steps", int, 1, None, False),
    "w": ("--w", int, 1, MAX_MASKS_PER_STEP, False),
    "samples": ("--samples", int, 1, None, False),
    "eta": ("--eta", float, None, None, False),
    "dc_step": ("--dc-step", float, None, None, False),
    "dc_lambda": ("--dc-lambda", float, None, None, False),
    "dc_iters": ("--dc-iters", int, 1, MAX_ITERATIONS, False),
    "dc_noise": ("--dc-noise", float, None, None, False),
    "t0": ("--t0", float, None, None, False),
    "sense_lambda": ("--sense-lambda", float, 0.0, None, False),
    "sense_iters": ("--sense-iters", int, 1, MAX_ITERATIONS, False),
    "batch_slices": ("--batch-slices", int, 1, None, False),
    "coverage": ("--coverage", float, 0.5, 0.99, False),
}


def _text(bound: float) -> str:
    """A bound as the message shows it: integers in full, others as ``%g``."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 2**53 else f"{bound:g}"


def parse_number(value: Any, flag: str, kind: type = float, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False) -> Union[int, float]:
    """``"6"`` -> ``6`` (``kind=int``) or ``6.0``: a finite number in ``[low, high]``
    (``(low, high]`` with ``low_open``); MrimsmError naming ``flag`` otherwise."""
    what = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        what += f" in {'(' if low_open else '['}{_text(low)}, {_text(high)}]"
    elif low is not None:
        what += f" {'>' if low_open else '>='} {_text(low)}"
    try:
        if kind is int:
            text = str(value).strip()
            number: Union[int, float] = int(text)
        else:
            number = float(value)
    except (TypeError, ValueError):
        raise MrimsmError(f"{flag} must be {what}, got {value!r}") from None
    bad_low = low is not None and (number <= low if low_open else number < low)
    if not math.isfinite(number) or bad_low or (high is not None and number > high):
        raise MrimsmError(f"{flag} must be {what}, got {value!r}")
    return number


def parse_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The command's options with numeric text parsed (see :data:`NUMERIC_OPTIONS`).

    ``None`` stays ``None`` (not given); other keys pass through unchanged.
    """
    out = dict(raw)
    for key, (flag, kind, low, high, low_open) in NUMERIC_OPTIONS.items():
        if out.get(key) is not None:
            out[key] = parse_number(out[key], flag, kind, low, high, low_open)
    return out


@dataclass(frozen=True)
class ReconOptions:
    """How to reconstruct: the arguments :func:`~mrimsm.recon.reconstruct_file` and
    :func:`~mrimsm.recon.reconstruct_directory` share (both also take these fields as
    arguments instead: ``methods``, ``accel``, ``seed`` positionally or by keyword, the rest
    by keyword).

    Attributes:
        methods: method names (default: :func:`~mrimsm.recon.default_method`).
        accel: acceleration (number or string) for fully sampled files.
        seed: base seed of masks and method randomness.
        options: method options (``cs_lambda``, ``cs_iters``, ``device``, ...).
        png_dir: write per-slice figures there.
        center_fraction: override the retrospective mask's centre fraction.
        maps_fn: replace ESPIRiT (see :func:`~mrimsm.recon.prepare_volume`).
        progress: ``progress(desc, total)`` -> context manager with ``update(n)``.
        coils: compress each scan to this many virtual coils before the coil maps
            (``--coils``; :func:`mrimsm.data.coil_compression.compress_coils`); ``None``: none.
    """

    methods: Optional[Sequence[str]] = None
    accel: Optional[Any] = None
    seed: int = 0
    _: KW_ONLY
    options: Optional[Mapping[str, Any]] = None
    png_dir: Optional[Union[str, os.PathLike]] = None
    center_fraction: Optional[float] = None
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
    progress: Optional[Progress] = None
    coils: Optional[Any] = None

    @classmethod
    def of(cls, given: Optional["ReconOptions"], *args: Any, **kwargs: Any) -> "ReconOptions":
        """``given``, or one built from its fields as arguments (``methods, accel, seed``
        positionally, any by keyword); TypeError for both, or an unknown keyword."""
        if given is None:
            return cls(*args, **kwargs)
        if args or kwargs:
            raise TypeError("give either recon_options or its fields (methods, accel, ...), not both")
        return given

    def resolved(self) -> "ReconOptions":
        """Checked before any file is read: the method names without repeats (default:
        :func:`~mrimsm.recon.default_method`), ``accel`` parsed by :func:`parse_accel` and
        ``coils`` an integer >= 1 or ``None``."""
        from mrimsm.data.coil_compression import check_coils

        return dataclasses.replace(
            self,
            methods=list(dict.fromkeys(self.methods or [default_method()])),
            accel=parse_accel(self.accel) if self.accel is not None else None,
            coils=check_coils(self.coils),
        )
