"""Training configuration: YAML -> validated dataclasses.

A config file has the common sections ``data``, ``train`` and ``sample``, an
optional ``method`` key (default ``msm``) and the sections of its method (for
MSM: ``model`` and ``diffusion``): the ``config_sections`` of its
:class:`~mrimsm.trainmethod.TrainMethod`, found in the table
:data:`mrimsm.methods.TRAINING_METHODS`.

Every key is checked: each section is a dataclass whose annotations give the
types, ranges and choices of its keys (:mod:`mrimsm.settings` validates them with
pydantic), and whose ``validate()`` makes the checks that involve several keys. An
unknown key, a missing required key or a bad value raises
:class:`~mrimsm.errors.MrimsmError` naming the key and file::

    >>> cfg = load_config("configs/tiny.yaml")
    >>> cfg.train.lr, cfg.model.model_channels
    (0.0002, 32)

Numbers written like ``2e-4`` (which YAML 1.1 reads as a string) are read as
numbers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

from annotated_types import Ge, Gt, Interval, MultipleOf

from mrimsm.data.training_data import default_cache_dir
from mrimsm.errors import MrimsmError
from mrimsm.limits import SEED_LIMIT
from mrimsm.methods import known_methods, training_method
from mrimsm.settings import SettingError, validate_dataclass

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
        _check(len(self.scales) >= 1 and all(0.25 <= x <= 4 for x in self.scales)
               and len(set(self.scales)) == len(self.scales), "scales",
               "must be a non-empty list of distinct numbers in [0.25, 4]")
        _check(self.pixel == "native" or self.scales == [1.0], "scales",
               "needs pixel: native (fit resizes the whole field of view)")
        _check(self.center_lines is None or self.center_lines < self.size, "center_lines",
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
        _check(all(self.flip_exclude), "flip_exclude",
               "must be a list of non-empty acquisition prefixes (e.g. [SAG])")
        if (self.root is None) == (self.simulated is None):
            raise _KeyProblem("root", "set exactly one of data.root and data.simulated")


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


def _section(cls: type, value: Any, where: str, source: str) -> Any:
    """Section ``where`` of the config as dataclass ``cls``: types, ranges and choices
    from its annotations (:func:`mrimsm.settings.validate_dataclass`), then the
    ``validate()`` cross-checks of it and of its nested sections."""
    try:
        obj = validate_dataclass(cls, value)
    except SettingError as exc:
        key = f"{where}.{exc.key}" if exc.key else where
        if exc.kind == "unknown":
            raise MrimsmError(f"{source}: unknown key {key!r} (allowed: {', '.join(exc.allowed)})") from None
        if exc.kind == "missing":
            raise MrimsmError(f"{source}: missing key {key!r}") from None
        raise MrimsmError(f"{source}: key {key!r} {exc.message}") from None
    _cross_check(obj, where, source)
    return obj


def _cross_check(obj: Any, where: str, source: str) -> None:
    """Run ``validate()`` of ``obj`` and of the dataclasses in its fields (inner first)."""
    for f in dataclasses.fields(obj):
        inner = getattr(obj, f.name)
        if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            _cross_check(inner, f"{where}.{f.name}", source)
    validate = getattr(obj, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except _KeyProblem as exc:
        raise MrimsmError(f"{source}: key {where + '.' + exc.key!r} {exc.message}") from None
    except ValueError as exc:
        raise MrimsmError(f"{source}: section {where!r}: {exc}") from None


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
        if not isinstance(value, Mapping):
            raise MrimsmError(f"{source}: key {key!r} must be a mapping of keys, got {value!r}")
        built[key] = _section(cls, value, key, source)
    return Config(
        method=name,
        data=built["data"],
        train=built["train"],
        sample=built["sample"],
        sections={k: v for k, v in built.items() if k not in COMMON_SECTIONS},
        source=source,
    )


#: ``2e-4``, ``-1E+3``: exponent floats without a dot, which YAML 1.1 leaves as strings
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def load_config(path: str | os.PathLike, method: Optional[str] = None) -> Config:
    """Read and validate a YAML config file (see the module docstring)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        """YAML 1.1 with ``2e-4`` read as a number (1.1's float needs a dot: ``2.0e-4``)."""

    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    path = Path(path)
    if path.is_dir():
        raise MrimsmError(f"config {str(path)!r} is a directory; give a YAML file (e.g. configs/tiny.yaml)")
    if not path.is_file():
        raise MrimsmError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MrimsmError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise MrimsmError(f"{path}: not a text file") from None
    if raw is None:
        raise MrimsmError(f"{path}: the config file is empty")
    return config_from_dict(raw, source=str(path), method=method)
