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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from mrimsm.data.training_data import default_cache_dir
from mrimsm.errors import MrimsmError
from mrimsm.methods import known_methods, training_method
from mrimsm.sections import DataConfig, SampleConfig, SimulatedDataConfig, TrainConfig
from mrimsm.settings import KeyProblem, SettingError, validate_dataclass, yaml_loader

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


# -- the sections of a config -------------------------------------------------------

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
    except KeyProblem as exc:
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


def load_config(path: str | os.PathLike, method: Optional[str] = None) -> Config:
    """Read and validate a YAML config file (see the module docstring)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise MrimsmError(f"config {str(path)!r} is a directory; give a YAML file (e.g. configs/tiny.yaml)")
    if not path.is_file():
        raise MrimsmError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MrimsmError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise MrimsmError(f"{path}: not a text file") from None
    if raw is None:
        raise MrimsmError(f"{path}: the config file is empty")
    return config_from_dict(raw, source=str(path), method=method)
