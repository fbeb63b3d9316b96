"""The common sections of a training config: ``data``, ``train`` and ``sample``.

Each is a dataclass whose field annotations give every key's type, range and choices
(validated by :func:`mrimsm.settings.validate_dataclass`); ``validate()`` holds the
checks across keys. :mod:`mrimsm.config` reads them from YAML; ``mrimsm train`` and
``mrimsm sample`` check their options against the same fields (importing this module
does not import torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from annotated_types import Ge, Gt, Interval, MultipleOf

from mrimsm.limits import SEED_LIMIT
from mrimsm.settings import KeyProblem, check

__all__ = ["Seed", "Count", "NonNegative", "SimulatedDataConfig", "DataConfig", "TrainConfig", "SampleConfig"]

#: a seed: NumPy, torch and an HDF5 attribute all take it (:data:`mrimsm.limits.SEED_LIMIT`)
Seed = Annotated[int, Interval(ge=0, le=SEED_LIMIT - 1)]
Count = Annotated[int, Ge(1)]
NonNegative = Annotated[int, Ge(0)]


@dataclass
class SimulatedDataConfig:
    """A simulated training set built on first use (MNI152 slices, simulated coils).

    ``size``: a multiple of 16 (the prep pipeline that builds the set crops to one).
    ``center_lines`` ``None`` scales the paper's 20 of 256 central columns to ``size``.
    ``pixel``: ``fit`` resizes the template's 233 mm field of view to ``size``
    pixels; ``native`` keeps its 1 mm pixels, zero-padded to ``size`` (use
    ``size >= 240``; see :func:`mrimsm.data.simulate.mni_slices`). ``scales``
    (``native`` only): each training slice once per resampling factor, i.e. at
    pixels of ``1 / scale`` mm (default ``[1.0]``; real scans range from about 0.7
    to 1.4 mm).
    """

    size: Annotated[int, Ge(16), MultipleOf(16)] = 64
    num_coils: Count = 8
    accel: Annotated[float, Ge(1)] = 4.0
    rho: Annotated[float, Ge(0)] = 0.0
    seed: Seed = 0
    center_lines: Optional[Count] = None
    pixel: Literal["fit", "native"] = "fit"
    scales: list[float] = field(default_factory=lambda: [1.0])

    def validate(self) -> None:
        check(len(self.scales) >= 1 and all(0.25 <= x <= 4 for x in self.scales)
               and len(set(self.scales)) == len(self.scales), "scales",
               "must be a non-empty list of distinct numbers in [0.25, 4]")
        check(self.pixel == "native" or self.scales == [1.0], "scales",
               "needs pixel: native (fit resizes the whole field of view)")
        check(self.center_lines is None or self.center_lines < self.size, "center_lines",
               "must be >= 1 and smaller than size")


@dataclass
class DataConfig:
    """Where the training measurements come from: exactly one of ``root`` (a
    prepared shard directory; relative paths are relative to the working directory)
    or ``simulated`` (built into ``cache_dir`` on first use; default
    ``$MRIMSM_CACHE`` or ``~/.cache/mrimsm``). ``flip_prob``: each training
    example is flipped left-right with this probability, k-space, coil maps and
    mask together, so the measurement model stays exact (:mod:`mrimsm.data.augment`).
    ``flip_exclude``: acquisitions (prefixes of the manifest's ``acquisition``, e.g.
    ``SAG``) never flipped: their column axis is not left-right (a flipped sagittal
    slice faces backwards)."""

    root: Optional[str] = None
    simulated: Optional[SimulatedDataConfig] = None
    cache_dir: Optional[str] = None
    split: str = "train"
    flip_prob: Annotated[float, Interval(ge=0, le=1)] = 0.0
    flip_exclude: list[str] = field(default_factory=lambda: ["SAG"])

    def validate(self) -> None:
        check(all(self.flip_exclude), "flip_exclude",
               "must be a list of non-empty acquisition prefixes (e.g. [SAG])")
        if (self.root is None) == (self.simulated is None):
            raise KeyProblem("root", "set exactly one of data.root and data.simulated")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is per process (under
    torchrun the global batch is ``batch_size * world_size``). ``grad_clip`` 0
    disables clipping. ``amp``: mixed precision on CUDA; ``cpu_bf16``: bf16 autocast
    on CPU (see :func:`mrimsm.train._amp_dtype`)."""

    lr: Annotated[float, Gt(0)]
    batch_size: Count
    max_steps: NonNegative
    ema: Annotated[float, Interval(ge=0, lt=1)] = 0.999
    grad_clip: Annotated[float, Ge(0)] = 1.0
    weight_decay: Annotated[float, Ge(0)] = 0.0
    ckpt_every: NonNegative = 500
    keep_every: NonNegative = 0
    log_every: Count = 10
    sample_every: NonNegative = 0
    seed: Seed = 0
    num_workers: NonNegative = 0
    amp: bool = True
    cpu_bf16: bool = False


@dataclass
class SampleConfig:
    """Defaults of ``mrimsm sample`` (its options take their ranges from here) and of
    the preview grid written while training."""

    steps: Count = 200
    w: Count = 1
    eta: Annotated[float, Interval(ge=0, le=1)] = 1.0
    num: Count = 16
    batch_size: Count = 8
    preview_num: Count = 4
    preview_steps: Count = 20
