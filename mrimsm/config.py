"""Training configuration: YAML -> validated dataclasses.

A config file has the common sections ``data``, ``train`` and ``sample``, an
optional ``method`` key (default ``msm``) and the sections of its method (for
MSM: ``model`` and ``diffusion``): the ``config_sections`` of its
:class:`~mrimsm.trainmethod.TrainMethod`, found in the table
:data:`mrimsm.methods.TRAINING_METHODS`.

Every key is checked: an unknown key, a missing required key or a value of the
wrong type raises :class:`~mrimsm.errors.MrimsmError` naming the key and file::

    >>> cfg = load_config("configs/tiny.yaml")
    >>> cfg.train.lr, cfg.model.model_channels
    (0.0002, 32)

Numbers written like ``2e-4`` (which YAML 1.1 reads as a string) are accepted
for float fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from mrimsm.data.training_data import default_cache_dir
from mrimsm.errors import MrimsmError
from mrimsm.limits import SEED_LIMIT
from mrimsm.methods import known_methods, training_method

__all__ = [
    "SimulatedDataConfig",
    "DataConfig",
    "TrainConfig",
    "SampleConfig",
    "Config",
    "method_schema",
    "known_methods",
    "load_config",
    "config_from_dict",
    "default_cache_dir",
]


# -- common sections -----------------------------------------------------------


@dataclass
class SimulatedDataConfig:
    """A simulated training set built on first use (MNI152 slices, simulated coils).

    ``center_lines`` ``None`` scales the paper's 20 of 256 central columns to ``size``.
    ``pixel``: ``fit`` resizes the template's 233 mm field of view to ``size``
    pixels; ``native`` keeps its 1 mm pixels, zero-padded to ``size`` (use
    ``size >= 240``; see :func:`mrimsm.data.simulate.mni_slices`). ``scales``
    (``native`` only): each training slice once per resampling factor, i.e. at
    pixels of ``1 / scale`` mm (default ``[1.0]``; real scans range from about 0.7
    to 1.4 mm).
    """

    size: int = 64
    num_coils: int = 8
    accel: float = 4.0
    rho: float = 0.0
    seed: int = 0
    center_lines: Optional[int] = None
    pixel: str = "fit"
    scales: list[float] = field(default_factory=lambda: [1.0])

    def validate(self) -> None:
        # the prep pipeline that builds the set crops to a multiple of 16 (PrepOptions.validate)
        _check(self.size >= 16 and self.size % 16 == 0, "size", "must be a positive multiple of 16")
        _check(self.pixel in ("fit", "native"), "pixel", "must be fit or native")
        _check(isinstance(self.scales, list) and len(self.scales) >= 1
               and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.25 <= x <= 4 for x in self.scales)
               and len(set(map(float, self.scales))) == len(self.scales), "scales",
               "must be a non-empty list of distinct numbers in [0.25, 4]")
        _check(self.pixel == "native" or [float(x) for x in self.scales] == [1.0], "scales",
               "needs pixel: native (fit resizes the whole field of view)")
        _check(self.num_coils >= 1, "num_coils", "must be >= 1")
        _check(self.accel >= 1, "accel", "must be >= 1")
        _check(self.rho >= 0, "rho", "must be >= 0")
        _check(0 <= self.seed < SEED_LIMIT, "seed", f"must be an integer in [0, {SEED_LIMIT - 1}]")
        _check(self.center_lines is None or 1 <= self.center_lines < self.size, "center_lines",
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
    flip_prob: float = 0.0
    flip_exclude: list[str] = field(default_factory=lambda: ["SAG"])

    def validate(self) -> None:
        _check(0.0 <= self.flip_prob <= 1.0, "flip_prob", "must be in [0, 1]")
        _check(all(isinstance(a, str) and a for a in self.flip_exclude), "flip_exclude",
               "must be a list of non-empty acquisition prefixes (e.g. [SAG])")
        if (self.root is None) == (self.simulated is None):
            raise _KeyProblem("root", "set exactly one of data.root and data.simulated")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is per process (under
    torchrun the global batch is ``batch_size * world_size``). ``amp``: mixed
    precision on CUDA; ``cpu_bf16``: bf16 autocast on CPU (see :func:`mrimsm.train._amp_dtype`)."""

    lr: float
    batch_size: int
    max_steps: int
    ema: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ckpt_every: int = 500
    keep_every: int = 0
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    cpu_bf16: bool = False

    def validate(self) -> None:
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.max_steps >= 0, "max_steps", "must be >= 0")
        _check(0 <= self.ema < 1, "ema", "must be in [0, 1)")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        for key in ("ckpt_every", "keep_every", "log_every", "sample_every", "num_workers"):
            _check(getattr(self, key) >= 0, key, "must be >= 0")
        _check(self.log_every >= 1, "log_every", "must be >= 1")
        _check(0 <= self.seed < SEED_LIMIT, "seed", f"must be an integer in [0, {SEED_LIMIT - 1}]")


@dataclass
class SampleConfig:
    """Defaults of ``mrimsm sample`` and of the preview grid written while training."""

    steps: int = 200
    w: int = 1
    eta: float = 1.0
    num: int = 16
    batch_size: int = 8
    preview_num: int = 4
    preview_steps: int = 20

    def validate(self) -> None:
        for key in ("steps", "w", "num", "batch_size", "preview_num", "preview_steps"):
            _check(getattr(self, key) >= 1, key, "must be >= 1")
        _check(0 <= self.eta <= 1, "eta", "must be in [0, 1]")


# -- a method's sections ------------------------------------------------------------

COMMON_SECTIONS = {"data": DataConfig, "train": TrainConfig, "sample": SampleConfig}


def method_schema(name: str) -> dict[str, type]:
    """The config sections of training method ``name`` (its ``config_sections``, from
    the table :data:`mrimsm.methods.TRAINING_METHODS`)."""
    sections = dict(training_method(name).config_sections)
    clash = set(sections) & (set(COMMON_SECTIONS) | {"method"})
    if clash:
        raise MrimsmError(f"method {name!r} may not redefine the common sections {sorted(clash)}")
    for cls in sections.values():
        if not dataclasses.is_dataclass(cls):
            raise MrimsmError(f"method {name!r}: section classes must be dataclasses, got {cls!r}")
    return sections


# -- the config object -------------------------------------------------------------


@dataclass
class Config:
    """A validated config. Method sections are reachable as attributes
    (``cfg.model``, ``cfg.diffusion``) and in ``cfg.sections``."""

    method: str
    data: DataConfig
    train: TrainConfig
    sample: SampleConfig
    sections: dict = field(default_factory=dict)
    source: Optional[str] = None

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"config has no section {name!r}")

    def to_dict(self) -> dict:
        """Plain dict (YAML/JSON/checkpoint friendly), the inverse of :func:`config_from_dict`."""
        out = {"method": self.method}
        for name in COMMON_SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        for name, value in self.sections.items():
            out[name] = dataclasses.asdict(value)
        return out

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted overrides, e.g. ``cfg.replace(**{"train.max_steps": 10})``."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return config_from_dict(d, source=self.source)


class _KeyProblem(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _KeyProblem(key, message)


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _float_or_none(value: Any) -> Optional[float]:
    """``value`` as a float (a number or numeric text; not a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], where, source)
        for a in inner:
            try:
                return _convert(value, a, where, source)
            except MrimsmError:
                continue
        raise MrimsmError(f"{source}: key {where!r} has an invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MrimsmError(f"{source}: key {where!r} must be a list, got {value!r}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise MrimsmError(f"{source}: key {where!r} must be a mapping of keys, got {value!r}")
        return _build(tp, value, where, source)
    if tp is Any:
        return value
    if value is None:
        raise MrimsmError(f"{source}: key {where!r} must be {_type_name(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = _float_or_none(value)
        if number is not None:
            if not math.isfinite(number):
                raise MrimsmError(f"{source}: key {where!r} must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise MrimsmError(f"{source}: key {where!r} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: Mapping, where: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, naming bad keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in fields:
            allowed = ", ".join(fields)
            raise MrimsmError(f"{source}: unknown key {prefix + str(key)!r} (allowed: {allowed})")
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MrimsmError(f"{source}: missing key {prefix + name!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except _KeyProblem as exc:
            raise MrimsmError(f"{source}: key {prefix + exc.key!r} {exc.message}") from None
        except ValueError as exc:
            raise MrimsmError(f"{source}: section {where!r}: {exc}") from None
    return obj


def config_from_dict(
    raw: Mapping, source: str = "<config>", method: Optional[str] = None
) -> Config:
    """Validate a parsed config.

    Args:
        raw: the parsed YAML mapping.
        source: the file name used in error messages.
        method: the method asked for on the command line; must agree with the
            file's ``method`` key when both are given.
    """
    if not isinstance(raw, Mapping):
        raise MrimsmError(f"{source}: a config must be a mapping of sections, got {type(raw).__name__}")
    file_method = raw.get("method")
    if file_method is not None and not isinstance(file_method, str):
        raise MrimsmError(f"{source}: key 'method' must be a string, got {file_method!r}")
    if method is not None and file_method is not None and method != file_method:
        raise MrimsmError(f"{source}: the config is for method {file_method!r} but --method {method} was given")
    name = method or file_method or "msm"
    schema = {**COMMON_SECTIONS, **method_schema(name)}
    for key in raw:
        if key != "method" and key not in schema:
            raise MrimsmError(f"{source}: unknown key {key!r} (sections for {name}: {', '.join(schema)})")
    built = {}
    for key, cls in schema.items():
        if key not in raw:
            if key == "sample":
                built[key] = cls()
                continue
            raise MrimsmError(f"{source}: missing section {key!r}")
        value = raw[key] if raw[key] is not None else {}
        built[key] = _convert(value, cls, key, source)
    return Config(
        method=name,
        data=built["data"],
        train=built["train"],
        sample=built["sample"],
        sections={k: v for k, v in built.items() if k not in COMMON_SECTIONS},
        source=source,
    )


def load_config(path: str | os.PathLike, method: Optional[str] = None) -> Config:
    """Read and validate a YAML config file (see the module docstring)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise MrimsmError(f"config {str(path)!r} is a directory; give a YAML file (e.g. configs/tiny.yaml)")
    if not path.is_file():
        raise MrimsmError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MrimsmError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise MrimsmError(f"{path}: not a text file") from None
    if raw is None:
        raise MrimsmError(f"{path}: the config file is empty")
    return config_from_dict(raw, source=str(path), method=method)
