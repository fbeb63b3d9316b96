"""Typed settings: a dataclass whose field annotations carry each setting's type, range
and choices, validated by pydantic.

A field says what it accepts once, in its annotation, e.g.::

    @dataclass
    class SampleConfig:
        steps: Annotated[int, Ge(1)] = 200
        eta: Annotated[float, Interval(ge=0, le=1)] = 1.0
        pixel: Literal["fit", "native"] = "fit"

:func:`validate_dataclass` builds the dataclass from a mapping (a YAML section) with
strict types (no ``"yes"`` for a bool, no ``"8"`` for an int, no bool for a number),
finite floats and unknown keys refused; nested dataclasses are mappings of their own.
:func:`check_field` checks one value against one field, so a command's option and the
config key it overrides share one definition.

A bad value raises :class:`SettingError` with the dotted key (relative to the mapping
given) and a message such as ``must be in [0, 1], got 2``. Checks that involve several
keys stay in the dataclass's ``validate()``, which raises :class:`KeyProblem`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

import annotated_types as at
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from mrimsm.errors import MrimsmError

__all__ = ["SettingError", "KeyProblem", "check", "validate_dataclass", "check_field", "describe",
           "field_annotation", "yaml_loader"]

#: strict types, unknown keys refused, NaN and infinities refused
_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SettingError(ValueError):
    """A bad key or value: ``kind`` is ``"unknown"`` (a key no field has; ``allowed``
    lists the fields), ``"missing"`` (a required key) or ``"value"``; ``key`` is dotted
    (``simulated.scales[1]``)."""

    def __init__(self, kind: str, key: str, message: str = "", allowed: tuple = ()):
        super().__init__(f"{key}: {message}" if message else key)
        self.kind, self.key, self.message, self.allowed = kind, key, message, allowed


class KeyProblem(ValueError):
    """What a dataclass's ``validate()`` raises for a check across keys: ``key`` (a
    field name) and ``message`` (``"needs pixel: native"``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def check(ok: bool, key: str, message: str) -> None:
    """Raise :class:`KeyProblem` ``(key, message)`` unless ``ok``."""
    if not ok:
        raise KeyProblem(key, message)


def validate_dataclass(cls: type, values: Any) -> Any:
    """An instance of dataclass ``cls`` from the mapping ``values`` (nested dataclass
    fields from nested mappings); :class:`SettingError` for the first problem found
    (unknown keys first, then missing ones, then values)."""
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        raise _setting_error(cls, exc) from None


def check_field(cls: type, name: str, value: Any, label: str) -> Any:
    """``value`` validated as field ``name`` of dataclass ``cls`` (a command-line value
    for the config key it overrides); MrimsmError ``"<label> must be ..., got ..."``."""
    try:
        return _field_adapter(cls, name).validate_python(value)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise MrimsmError(f"{label} {_value_message(err, field_annotation(cls, name))}") from None


def field_annotation(cls: type, name: str) -> Any:
    """The annotation of field ``name`` of dataclass ``cls``, ``Annotated`` metadata kept."""
    return typing.get_type_hints(cls, include_extras=True)[name]


def describe(annotation: Any) -> str:
    """What an annotation's constraints ask for: ``"in [0, 1)"``, ``"an integer in [0, 9]"``, ``">= 1"``,
    ``"fit or native"``, ``">= 16 and a multiple of 16"``; ``""`` when it has none."""
    base, meta = _split(annotation)
    if typing.get_origin(base) is Literal:
        return _either([str(c) for c in typing.get_args(base)])
    lo = hi = None
    lo_open = hi_open = False
    parts = []
    for m in meta:
        if isinstance(m, (at.Ge, at.Gt)):
            lo, lo_open = (m.ge, False) if isinstance(m, at.Ge) else (m.gt, True)
        elif isinstance(m, (at.Le, at.Lt)):
            hi, hi_open = (m.le, False) if isinstance(m, at.Le) else (m.lt, True)
        elif isinstance(m, at.MultipleOf):
            parts.append(f"a multiple of {_num(m.multiple_of)}")
        elif isinstance(m, at.MinLen):
            parts.append("a non-empty list" if m.min_length == 1 else f"a list of at least {m.min_length}")
    if lo is not None and hi is not None:
        interval = f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
        parts.insert(0, f"an integer {interval}" if base is int else interval)
    elif lo is not None:
        parts.insert(0, f"{'>' if lo_open else '>='} {_num(lo)}")
    elif hi is not None:
        parts.insert(0, f"{'<' if hi_open else '<='} {_num(hi)}")
    return " and ".join(parts)


#: ``2e-4``, ``-1E+3``: exponent floats without a dot, which YAML 1.1 leaves as strings
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


@functools.lru_cache(maxsize=None)
def yaml_loader() -> type:
    """The YAML loader of settings files (configs, solver settings): PyYAML's safe loader
    with ``2e-4`` read as a number (YAML 1.1's float needs a dot: ``2.0e-4``), so that
    such a value meets a float field's strict check as a float."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return Loader


# -- dataclass -> pydantic model ---------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(_swap(cls))


@functools.lru_cache(maxsize=None)
def _field_adapter(cls: type, name: str) -> TypeAdapter:
    return TypeAdapter(_swap(field_annotation(cls, name)), config=_CONFIG)


@functools.lru_cache(maxsize=None)
def _model(cls: type) -> type[BaseModel]:
    """A pydantic model with the fields of dataclass ``cls`` (nested dataclasses swapped too)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            spec = Field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            spec = Field(default_factory=f.default_factory)
        else:
            spec = Field()
        fields[f.name] = (_swap(hints[f.name]), spec)
    return create_model(f"{cls.__name__}Settings", __config__=_CONFIG, **fields)


def _swap(tp: Any) -> Any:
    """``tp`` with every dataclass in it replaced by its model, turned back into the
    dataclass once validated."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return Annotated[_model(tp), AfterValidator(functools.partial(_to_dataclass, tp))]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return Annotated[(_swap(args[0]), *tp.__metadata__)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_swap(a) for a in args)]
    if origin in (list, tuple, dict) and args:
        return origin[tuple(a if a is Ellipsis else _swap(a) for a in args)]
    return tp


def _to_dataclass(cls: type, model: BaseModel) -> Any:
    return cls(**dict(model))


# -- pydantic's errors -> SettingError ------------------------------------------------------

_TYPE_WORDS = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "finite_number": "a finite number", "literal_error": None,
}
_CONSTRAINTS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of",
                "too_short", "literal_error"}


def _setting_error(cls: type, exc: ValidationError) -> SettingError:
    errors = exc.errors(include_url=False)
    rank = {"extra_forbidden": 0, "missing": 1}
    err = min(errors, key=lambda e: rank.get(e["type"], 2))  # min is stable: first of its rank
    loc = tuple(err["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _class_at(cls, loc[:-1])
        allowed = tuple(f.name for f in dataclasses.fields(owner) if f.init) if owner else ()
        return SettingError("unknown", key, allowed=allowed)
    if kind == "missing":
        return SettingError("missing", key)
    return SettingError("value", key, _value_message(err, _annotation_at(cls, loc)))


def _value_message(err: dict, annotation: Any) -> str:
    """``"must be >= 1, got 0"``: what the annotation asks for, and the value."""
    got = "null" if err.get("input") is None else repr(err.get("input"))
    if err["type"] in _CONSTRAINTS:
        return f"must be {describe(annotation) or 'valid'}, got {got}"
    if err["type"] in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[err['type']]}, got {got}"
    return f"has an invalid value {got} ({err['msg']})"


def _annotation_at(cls: Any, loc: tuple) -> Any:
    """The annotation that validated the value at ``loc`` (field names and list indexes)."""
    tp: Any = cls
    for part in loc:
        tp = _strip(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tp = field_annotation(tp, part)
        else:
            return Any
    base, meta = _split(tp)
    return Annotated[(_strip(base), *meta)] if meta else _strip(base)


def _class_at(cls: type, loc: tuple) -> Optional[type]:
    tp = _strip(_annotation_at(cls, loc))
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _strip(tp: Any) -> Any:
    """``Optional[X]`` -> ``X`` and ``Annotated[X, ...]`` -> ``X`` (for walking types)."""
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (Union, types.UnionType) and len([a for a in args if a is not type(None)]) == 1:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _split(annotation: Any) -> tuple[Any, list]:
    """``(base type, flat constraint list)`` of an annotation, through ``Optional``."""
    meta: list = []
    tp = annotation
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            for m in tp.__metadata__:
                meta.extend(m if isinstance(m, at.GroupedMetadata) else [m])
            tp = args[0]
        elif origin in (Union, types.UnionType) and len([a for a in args if a is not type(None)]) == 1:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp, meta


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _either(words: list) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
