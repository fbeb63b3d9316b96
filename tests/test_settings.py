"""Typed settings (mrimsm.settings): a dataclass's annotations are its schema, for a YAML
section and for a command-line value alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

import pytest
from annotated_types import Ge, Interval, MinLen

from mrimsm.errors import MrimsmError
from mrimsm.settings import SettingError, check_field, describe, validate_dataclass


@dataclass
class _Inner:
    size: Annotated[int, Ge(16)] = 64
    scales: Annotated[list[Annotated[float, Interval(ge=0.25, le=4)]], MinLen(1)] = field(default_factory=lambda: [1.0])


@dataclass
class _Outer:
    lr: Annotated[float, Interval(gt=0, le=1)]
    seed: Annotated[int, Interval(ge=0, le=9)] = 0
    mode: Literal["fit", "native"] = "fit"
    amp: bool = True
    name: Optional[str] = None
    inner: Optional[_Inner] = None


def _problem(values: dict) -> SettingError:
    with pytest.raises(SettingError) as info:
        validate_dataclass(_Outer, values)
    return info.value


def test_builds_the_dataclass_with_nested_sections():
    out = validate_dataclass(_Outer, {"lr": 1, "inner": {"scales": [1, 0.5]}})
    assert out == _Outer(lr=1.0, inner=_Inner(scales=[1.0, 0.5]))
    assert type(out.inner) is _Inner and type(out.lr) is float  # the classes themselves, ints widened


@pytest.mark.parametrize("values, kind, key, message", [
    ({"lr": 0.1, "inner": {"coils": 4}}, "unknown", "inner.coils", ""),
    ({}, "missing", "lr", ""),
    ({"lr": 0}, "value", "lr", "must be in (0, 1], got 0"),
    ({"lr": float("nan")}, "value", "lr", "must be a finite number, got nan"),
    ({"lr": "0.1"}, "value", "lr", "must be a number, got '0.1'"),
    ({"lr": True}, "value", "lr", "must be a number, got True"),
    ({"lr": 0.1, "seed": 10}, "value", "seed", "must be an integer in [0, 9], got 10"),
    ({"lr": 0.1, "seed": "3"}, "value", "seed", "must be an integer, got '3'"),
    ({"lr": 0.1, "mode": "x"}, "value", "mode", "must be fit or native, got 'x'"),
    ({"lr": 0.1, "amp": "yes"}, "value", "amp", "must be true or false, got 'yes'"),
    ({"lr": 0.1, "name": 3}, "value", "name", "must be a string, got 3"),
    ({"lr": 0.1, "inner": 3}, "value", "inner", "must be a mapping of keys, got 3"),
    ({"lr": 0.1, "inner": {"size": 8}}, "value", "inner.size", "must be >= 16, got 8"),
    ({"lr": 0.1, "inner": {"scales": []}}, "value", "inner.scales", "must be a non-empty list, got []"),
    ({"lr": 0.1, "inner": {"scales": [1, 9]}}, "value", "inner.scales[1]", "must be in [0.25, 4], got 9"),
])
def test_problems_name_the_key(values, kind, key, message):
    problem = _problem(values)
    assert (problem.kind, problem.key, problem.message) == (kind, key, message)


def test_unknown_keys_come_first_and_list_the_fields():
    problem = _problem({"lr": -1, "inner": {"coils": 4}})
    assert problem.kind == "unknown" and problem.allowed == ("size", "scales")


def test_check_field_is_the_option_check():
    assert check_field(_Outer, "seed", 3, "--seed") == 3
    with pytest.raises(MrimsmError, match=r"^--seed must be an integer in \[0, 9\], got 10$"):
        check_field(_Outer, "seed", 10, "--seed")
    with pytest.raises(MrimsmError, match=r"^--lr must be a finite number, got inf$"):
        check_field(_Outer, "lr", float("inf"), "--lr")


def test_describe():
    assert describe(Annotated[float, Interval(ge=0, lt=1)]) == "in [0, 1)"
    assert describe(Optional[Annotated[int, Ge(1)]]) == ">= 1"
    assert describe(Literal["a", "b", "c"]) == "a, b or c"
    assert describe(int) == ""


def test_choice_options_are_the_settings_choices():
    """recon's and restore's choice options list the PosteriorSettings field's choices (the CLI
    modules declare them without importing torch): each init has one command, and none other."""
    import typing

    from mrimsm.cli import recon_cmd, restore_cmd
    from mrimsm.settings import field_annotation
    from mrimsm.solver_settings import PosteriorSettings

    def choices(name):
        return typing.get_args(field_annotation(PosteriorSettings, name))

    assert tuple(m.value for m in recon_cmd.DC) == choices("dc")
    assert tuple(m.value for m in recon_cmd.DCSchedule) == choices("dc_schedule")
    recon_inits, restore_inits = ({m.value for m in e} for e in (recon_cmd.Init, restore_cmd.Init))
    assert recon_inits | restore_inits == set(choices("init")) and recon_inits & restore_inits == {"none"}


def test_solver_settings_from_options_name_the_flag():
    from mrimsm.solver_settings import CSSettings, SenseSettings, settings_from_options

    assert settings_from_options(SenseSettings, {"sense_iters": 3, "cs_iters": 0}) == SenseSettings(iters=3)
    assert settings_from_options(CSSettings, {"cs_lambda": None}) == CSSettings()
    with pytest.raises(MrimsmError, match=r"^--cs-iters must be an integer in \[1, 100000\], got 0$"):
        settings_from_options(CSSettings, {"cs_iters": 0})
    with pytest.raises(MrimsmError, match=r"^--sense-lambda must be a number, got '0.1'$"):
        settings_from_options(SenseSettings, {"sense_lambda": "0.1"})


def test_posterior_settings_validate_with_the_annotations():
    from mrimsm.solver_settings import PosteriorSettings

    checked = PosteriorSettings(dc_step=2, t0=1).validate()
    assert (checked.dc_step, type(checked.dc_step), checked.t0) == (2.0, float, 1.0)
    for bad, message in [(dict(w=0), "w must be an integer in [1, 1000], got 0"),
                         (dict(dc="x"), "dc must be operator, measurement or tweedie, got 'x'"),
                         (dict(steps=True), "steps must be an integer, got True"),
                         (dict(init="none"), "t0 = 0.3 needs an initial image (init)")]:
        with pytest.raises(MrimsmError) as info:
            PosteriorSettings(**bad).validate()
        assert str(info.value) == message


def test_yaml_loader_reads_exponent_floats():
    import yaml

    from mrimsm.settings import yaml_loader

    assert yaml.load("a: 1e-4\nb: 2.0e-3\nc: '1e-4'\nd: 3\n", Loader=yaml_loader()) == {
        "a": 1e-4, "b": 2e-3, "c": "1e-4", "d": 3}
