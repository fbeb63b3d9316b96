"""Options several commands share, each declared once with its type and its check.

A check runs while Typer parses the command line, before the command starts: a bad
value is one ``error: <flag> must be ..., got ...`` line (exit 2) from the same rule the
library applies (:mod:`mrimsm.limits` for threads, seeds and finite numbers; a config
field's annotation, :func:`mrimsm.settings.check_field`, for an option that overrides
a config key). A value of the wrong type (``--steps abc``) is Click's usage error,
which :func:`mrimsm.cli.main.main` prints on one line too.
"""

from __future__ import annotations

import typing
from enum import Enum
from typing import Any, Callable, Optional, Sequence

import typer

from mrimsm.limits import check_finite, check_seed, check_threads
from mrimsm.settings import check_field, describe, field_annotation

__all__ = ["threads_option", "seed_option", "device_option", "setting_option", "finite_option", "field_choices", "choice_enum"]


def threads_option(help: str = "torch CPU threads (1 is fastest on a busy shared CPU).") -> Any:
    """``--threads N``: an int in ``[1, MAX_THREADS]``, ``None`` when not given."""
    return typer.Option(None, "--threads", metavar="N", callback=_unless_none(check_threads), help=help)


def seed_option(help: str, default: int = 0) -> Any:
    """``--seed INT``: an int in ``[0, SEED_LIMIT)``."""
    return typer.Option(default, "--seed", metavar="INT", callback=_unless_none(check_seed), help=help)


def device_option(help: str = "cpu, cuda or cuda:N (default: cuda if available).") -> Any:
    """``--device NAME``: checked by :func:`mrimsm.utils.resolve_device` when the command
    starts (whether CUDA and that GPU exist is known only then)."""
    return typer.Option(None, "--device", help=help)


def setting_option(cls: type, name: str, *flags: str, help: str) -> Any:
    """An option that overrides field ``name`` of config section ``cls`` (default
    ``None``: the config's value), checked against that field's annotation; the help
    ends with what the field takes (``[>= 1]``, ``[[0, 1]]``)."""
    label = flags[0]
    wanted = describe(field_annotation(cls, name)).removeprefix("in ")  # "[>= 1]", "[[0, 1]]"
    return typer.Option(None, *flags, callback=_unless_none(lambda v: check_field(cls, name, v, label)),
                        help=f"{help} [{wanted}]" if wanted else help)


def field_choices(cls: type, name: str) -> tuple[str, ...]:
    """The choices of field ``name`` of settings ``cls`` (its ``Literal``)."""
    return typing.get_args(field_annotation(cls, name))


def choice_enum(name: str, choices: Sequence[str]) -> type[Enum]:
    """A ``str`` Enum of ``choices``, for a Typer option that lists and checks them while
    parsing (``--dc [operator|measurement|tweedie]``); each member's value is the choice."""
    return Enum(name, {c.upper().replace("-", "_"): c for c in choices}, type=str)


def finite_option(default: Optional[float], *flags: str, help: str) -> Any:
    """A float option that refuses NaN and infinities (its range is the library's check)."""
    label = flags[0]
    return typer.Option(default, *flags, callback=_unless_none(lambda v: check_finite(v, label)), help=help)


def _unless_none(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def callback(value: Any) -> Any:
        return None if value is None else check(value)

    return callback
