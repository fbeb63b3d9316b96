"""Config loading: every key validated, errors name the key and the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mrimsm.config import (
    config_from_dict,
    known_methods,
    load_config,
    method_schema,
)
from mrimsm.errors import MrimsmError
from mrimsm.methods import TRAINING_METHODS
from mrimsm.trainmethod import TrainMethod

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["tiny.yaml", "tiny_noisy.yaml", "fastmri_r4.yaml", "fastmri_r4_noisy.yaml"]


def _write(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _tiny_dict() -> dict:
    return yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.method == "msm"
    assert cfg.train.lr > 0 and cfg.train.batch_size >= 1
    assert cfg.model.model_channels in (32, 128)
    assert cfg.source.endswith(name)


def test_paper_scale_settings():
    cfg = load_config(REPO / "configs" / "fastmri_r4.yaml")
    assert cfg.model.model_channels == 128
    assert cfg.model.channel_mult == [1, 1, 2, 2, 4, 4]
    assert cfg.model.attention_resolutions == [32, 16, 8]
    assert cfg.train.lr == pytest.approx(5e-5) and cfg.train.ema == pytest.approx(0.9999)
    assert cfg.diffusion.rho == 0.0 and cfg.diffusion.train_steps == 200
    noisy = load_config(REPO / "configs" / "fastmri_r4_noisy.yaml")
    assert noisy.diffusion.rho == pytest.approx(0.1) and noisy.diffusion.lambda_sure == pytest.approx(0.05)


def test_tiny_builds_simulated_data():
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert cfg.data.root is None and cfg.data.simulated.size == 64


def test_unknown_top_level_key(tmp_path):
    d = _tiny_dict()
    d["trian"] = {}
    p = _write(tmp_path, d)
    with pytest.raises(MrimsmError, match=r"c\.yaml.*unknown key 'trian'"):
        load_config(p)


def test_unknown_nested_key_names_the_path(tmp_path):
    d = _tiny_dict()
    d["train"]["lrr"] = 1e-3
    with pytest.raises(MrimsmError, match=r"c\.yaml: unknown key 'train\.lrr'"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["data"]["simulated"]["coils"] = 4
    with pytest.raises(MrimsmError, match=r"unknown key 'data\.simulated\.coils'"):
        load_config(_write(tmp_path, d))


def test_missing_required_key(tmp_path):
    d = _tiny_dict()
    del d["train"]["lr"]
    with pytest.raises(MrimsmError, match=r"c\.yaml: missing key 'train\.lr'"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    del d["model"]["model_channels"]
    with pytest.raises(MrimsmError, match=r"missing key 'model\.model_channels'"):
        load_config(_write(tmp_path, d))


def test_missing_section(tmp_path):
    d = _tiny_dict()
    del d["model"]
    with pytest.raises(MrimsmError, match=r"missing section 'model'"):
        load_config(_write(tmp_path, d))


def test_wrong_types(tmp_path):
    d = _tiny_dict()
    d["train"]["batch_size"] = "eight"
    with pytest.raises(MrimsmError, match=r"'train\.batch_size' must be an integer"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["model"]["channel_mult"] = 3
    with pytest.raises(MrimsmError, match=r"'model\.channel_mult' must be a list"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["train"]["amp"] = "yes"
    with pytest.raises(MrimsmError, match=r"'train\.amp' must be true or false"):
        load_config(_write(tmp_path, d))


def test_value_checks(tmp_path):
    d = _tiny_dict()
    d["train"]["lr"] = -1.0
    with pytest.raises(MrimsmError, match=r"'train\.lr' must be > 0"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["sample"]["w"] = 0
    with pytest.raises(MrimsmError, match=r"'sample\.w' must be >= 1"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["diffusion"]["train_steps"] = 5000
    with pytest.raises(MrimsmError, match=r"train_steps"):
        load_config(_write(tmp_path, d))


def test_simulated_scales(tmp_path):
    from mrimsm.data.training_data import _simulated_dir

    d = _tiny_dict()
    base = _simulated_dir(load_config(_write(tmp_path, d)))
    d["data"]["simulated"].update(size=256, pixel="native")
    native = load_config(_write(tmp_path, d))
    assert native.data.simulated.scales == [1.0] and _simulated_dir(native).name == base.name.replace("64px", "256px") + "-native"
    d["data"]["simulated"]["scales"] = [1, 0.7]
    both = load_config(_write(tmp_path, d))
    assert both.data.simulated.scales == [1.0, 0.7] and _simulated_dir(both).name.endswith("-native-x1_0.7")
    for bad, msg in (([], "non-empty"), ([1.0, 1.0], "distinct"), ([0.1], r"\[0.25, 4\]"), (0.7, "must be a list")):
        d["data"]["simulated"]["scales"] = bad
        with pytest.raises(MrimsmError, match=rf"'data\.simulated\.scales' .*{msg}"):
            load_config(_write(tmp_path, d))
    d["data"]["simulated"].update(pixel="fit", scales=[0.7])
    with pytest.raises(MrimsmError, match="needs pixel: native"):
        load_config(_write(tmp_path, d))


def test_yaml_string_float_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    text = (REPO / "configs" / "tiny.yaml").read_text().replace("lr: 2.0e-4", "lr: 3e-4")
    assert "lr: 3e-4" in text
    p.write_text(text)
    assert load_config(p).train.lr == pytest.approx(3e-4)


def test_data_needs_exactly_one_source(tmp_path):
    d = _tiny_dict()
    d["data"]["root"] = "somewhere"
    with pytest.raises(MrimsmError, match="exactly one"):
        load_config(_write(tmp_path, d))
    d = _tiny_dict()
    d["data"] = {}
    with pytest.raises(MrimsmError, match="exactly one"):
        load_config(_write(tmp_path, d))


def test_method_flag_must_agree(tmp_path):
    p = _write(tmp_path, _tiny_dict())
    with pytest.raises(MrimsmError, match="--method"):
        load_config(p, method="ssdu")
    assert load_config(p, method="msm").method == "msm"


def test_unknown_method(tmp_path):
    d = _tiny_dict()
    d["method"] = "magic"
    with pytest.raises(MrimsmError, match="unknown method 'magic'"):
        load_config(_write(tmp_path, d))


def test_bad_files(tmp_path):
    with pytest.raises(MrimsmError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(MrimsmError, match="not valid YAML"):
        load_config(p)
    p.write_text("")
    with pytest.raises(MrimsmError, match="empty"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(MrimsmError, match="mapping"):
        load_config(p)


@dataclass
class _ToyModel:
    width: int
    depth: int = 2


class _ToyMethod(TrainMethod):
    config_sections = {"model": _ToyModel}


class _BadMethod(TrainMethod):
    config_sections = {"train": _ToyModel}


def test_registered_method_sections(tmp_path, monkeypatch):
    monkeypatch.setitem(TRAINING_METHODS, "toy-config-test", _ToyMethod)
    monkeypatch.setitem(TRAINING_METHODS, "bad", _BadMethod)
    assert "toy-config-test" in known_methods()
    assert method_schema("toy-config-test") == {"model": _ToyModel}
    d = {
        "method": "toy-config-test",
        "data": {"root": "x"},
        "model": {"width": 3},
        "train": {"lr": 1e-3, "batch_size": 2, "max_steps": 5},
    }
    cfg = load_config(_write(tmp_path, d))
    assert cfg.model == _ToyModel(width=3, depth=2)
    assert cfg.sample.steps == 200  # the sample section is optional
    d["model"]["height"] = 1
    with pytest.raises(MrimsmError, match=r"unknown key 'model\.height'"):
        load_config(_write(tmp_path, d))
    with pytest.raises(MrimsmError, match="may not redefine the common sections"):
        method_schema("bad")


def test_round_trip_and_replace():
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    changed = cfg.replace(**{"train.max_steps": 7, "data.root": "d", "data.simulated": None})
    assert changed.train.max_steps == 7 and changed.data.root == "d" and changed.data.simulated is None
    assert cfg.train.max_steps != 7  # the original is untouched


@pytest.mark.parametrize("shipped, noisy, also", [
    ("default_msm256.yaml", "default_msm256_noisy.yaml", set()),
    ("default_msm.yaml", "default_msm_noisy.yaml", {"train.lr"}),
])
def test_the_noisy_configs_are_the_shipped_ones_but_for_the_loss(shipped, noisy, also):
    """The noisy-loss twins fine-tune the shipped states: same data, network and denoiser
    (so they resume), ``diffusion.rho`` follows the data (and the 64 one fine-tunes at a
    lower learning rate)."""
    from mrimsm.utils import flatten_mapping as flat

    base = flat(load_config(REPO / "configs" / shipped).to_dict())
    twin = flat(load_config(REPO / "configs" / noisy).to_dict())
    differ = {k for k in base.keys() | twin.keys() if base.get(k) != twin.get(k)} - {"source"}
    assert differ == {"diffusion.rho"} | also
    assert base["diffusion.rho"] == 0.0 and twin["diffusion.rho"] is None
    assert twin["data.simulated.rho"] == 0.01  # the noise the noisy loss then trains at


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("split", "loss_ratio", 1.0, "key 'split.loss_ratio' must be in (0, 1)"),
        ("split", "granularity", "rows", "key 'split.granularity' must be lines or points"),
        ("model", "num_unrolls", 0, "key 'model.num_unrolls' must be >= 1"),
        ("model", "kernel_size", 4, "key 'model.kernel_size' must be odd"),
    ],
)
def test_ssdu_sections_are_typed_like_the_others(tmp_path, section, key, value, message):
    """A bad value in an ssdu config is one message naming its key, as in every other section."""
    d = yaml.safe_load((REPO / "configs" / "ssdu_tiny.yaml").read_text())
    assert load_config(_write(tmp_path, d)).method == "ssdu"
    d[section][key] = value
    with pytest.raises(MrimsmError) as exc:
        load_config(_write(tmp_path, d))
    assert message in str(exc.value), str(exc.value)
