"""Input limits and validation: thread counts, seeds, NaN / inf, solver bounds, memory
and disk estimates made before any read or allocation, malformed headers, settings files,
decompression bombs, grayscale images, an ``--accel`` a file's own mask overrides and
all-zero slices. Each refusal is one ``error:`` line with exit 2 and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import write_fake_fastmri
from test_faults import _files, _one_error, _run

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "mrimsm" / "assets"
MSM = ASSETS / "default_msm.pt"


@pytest.fixture
def scan(tmp_path) -> Path:
    """A small fully sampled file: 2 slices, 4 coils, 32 x 32 (readout 64)."""
    return write_fake_fastmri(tmp_path / "in" / "scan.h5", "full", num_slices=2, size=32, num_coils=4)


def _grey_png(path: Path, size: int = 16) -> Path:
    yy, xx = np.mgrid[0:size, 0:size]
    Image.fromarray((128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.uint8), mode="L").save(path)
    return path


# -- F7: thread counts ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["recon", "restore", "sample", "train", "prep"])
def test_threads_beyond_the_bound_are_one_line(command, tmp_path, scan, capsys):
    args = {
        "recon": ["recon", scan, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "o.h5"],
        "restore": ["restore", _grey_png(tmp_path / "g.png"), "-t", "inpaint-box", "-o", tmp_path / "r.png"],
        "sample": ["sample", MSM, "-n", "1", "-o", tmp_path / "s.h5"],
        "train": ["train", REPO / "configs" / "tiny.yaml", "--out", tmp_path / "run"],
        "prep": ["prep-fastmri", scan.parent, tmp_path / "prep"],
    }[command]
    before = _files(tmp_path)
    rc, err, _ = _run([*args, "--threads", "100000", "-q"], capsys)
    _one_error(rc, err, "--threads must be an integer in [1, ", "got 100000")
    assert _files(tmp_path) == before


# -- F8: seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [str(2**64), str(2**32), "-1"])
@pytest.mark.parametrize("command", ["recon", "restore", "sample", "prep"])
def test_seed_outside_the_range_is_one_line_before_any_work(command, seed, tmp_path, scan, capsys):
    args = {
        "recon": ["recon", scan, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "o.h5"],
        "restore": ["restore", _grey_png(tmp_path / "g.png"), "-t", "inpaint-box", "-o", tmp_path / "r.png",
                    "--steps", "1", "--samples", "1"],
        "sample": ["sample", MSM, "-n", "1", "--steps", "1", "-o", tmp_path / "s.h5"],
        "prep": ["prep-fastmri", scan.parent, tmp_path / "prep", "--size", "32"],
    }[command]
    before = _files(tmp_path)
    rc, err, _ = _run([*args, "--seed", seed, "-q"], capsys)
    _one_error(rc, err, "--seed must be an integer in [0, 4294967295]", seed)
    assert _files(tmp_path) == before


def test_train_config_seed_outside_the_range(tmp_path, capsys):
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["train"]["seed"] = 2**64
    path = tmp_path / "big_seed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, err, _ = _run(["train", path, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, "seed", "must be an integer in [0, 4294967295]")
    assert not (tmp_path / "run").exists()


# -- F9: memory estimate before reading k-space ----------------------------------------------


def _empty_chunked(path: Path) -> Path:
    """A few KB on disk, 56 GiB in memory: a chunked kspace that was never written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(1000, 32, 640, 368), dtype=np.complex64, chunks=(1, 1, 640, 368))
    return path


def test_huge_empty_kspace_is_one_line(tmp_path, capsys):
    big = _empty_chunked(tmp_path / "in" / "big.h5")
    assert big.stat().st_size < 100_000
    rc, err, _ = _run(["recon", big, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "o.h5", "-q"], capsys)
    _one_error(rc, err, "big.h5", "(1000, 32, 640, 368)", "56.2 GiB of memory")
    assert not (tmp_path / "o.h5").exists()


def test_huge_file_in_a_directory_fails_alone(tmp_path, capsys):
    src = tmp_path / "in"
    _empty_chunked(src / "big.h5")
    write_fake_fastmri(src / "good.h5", "full", num_slices=2, size=32, num_coils=4)
    rc, err, out = _run(["recon", src, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "out", "-q"], capsys)
    assert rc == 1, (rc, err)
    assert "failed  big.h5:" in out and "56.2 GiB of memory" in out and "done    good.h5" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.h5"]


# -- F10: prep --size and train model_channels checked before allocating ---------------------


def test_prep_size_beyond_memory_is_one_line(tmp_path, scan, capsys):
    rc, err, _ = _run(["prep-fastmri", scan.parent, tmp_path / "prep", "--size", "100000", "--skip-last", "0", "-q"], capsys)
    _one_error(rc, err, "--size 100000", "GiB of memory", "lower --size")
    assert not (tmp_path / "prep").exists()


def test_train_model_beyond_memory_is_one_line(tmp_path, prepared_measurements, capsys):
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["model"]["model_channels"] = 100000
    cfg["model"]["num_head_channels"] = 100000
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, err, _ = _run(["train", path, "--data", prepared_measurements, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, "parameters", "GiB of memory", "model_channels")


# -- F13: a reconSpace of 0 x 0 or negative --------------------------------------------------


def _set_recon_space(path: Path, x: int, y: int) -> None:
    with h5py.File(path, "a") as f:
        xml = bytes(f["ismrmrd_header"][()]).decode()
        start = xml.index("<reconSpace>")
        end = xml.index("</reconSpace>")
        space = xml[start:end]
        new = space[: space.index("<x>") + 3] + str(x) + space[space.index("</x>"):]
        new = new[: new.index("<y>") + 3] + str(y) + new[new.index("</y>"):]
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = np.bytes_(xml[:start] + new + xml[end:])
        del f["reconstruction_rss"]


@pytest.mark.parametrize("x, y", [(0, 0), (-64, -32)])
def test_recon_space_not_positive_falls_back_to_the_kspace_size(tmp_path, scan, x, y, capsys):
    from mrimsm.data.fastmri_io import read_header

    _set_recon_space(scan, x, y)
    assert read_header(scan)["recon_size"] == (64, 32)
    rc, err, _ = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "o.h5", "-q"], capsys)
    assert rc == 0, err
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["reconstruction"].shape == (2, 64, 32)


# -- F14: the solver settings file -----------------------------------------------------------


@pytest.mark.parametrize("case, needle", [
    ("directory", "is a directory; give a YAML file"),
    ("steps_abc", "steps must be an integer, got 'abc'"),
    ("non_utf8", "not a text file"),
    ("eta_nan", "eta must be a finite number"),
])
def test_settings_file_problems_are_one_line(case, needle, tmp_path, scan, capsys):
    settings = tmp_path / "settings.yaml"
    if case == "directory":
        settings = tmp_path / "a_dir"
        settings.mkdir()
    elif case == "steps_abc":
        settings.write_text("steps: abc\n")
    elif case == "non_utf8":
        settings.write_bytes(b"steps: 5\n# caf\xe9 \xff\n")
    else:
        settings.write_text("eta: .nan\n")
    rc, err, _ = _run(["recon", scan, "-R", "4", "-m", "msm", "--settings", settings, "-o", tmp_path / "o.h5",
                       "-q"], capsys)
    _one_error(rc, err, needle)
    assert not (tmp_path / "o.h5").exists()


# -- F17: decompression bombs and other Pillow errors ----------------------------------------


def test_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    rc, err, _ = _run(["restore", bomb, "-t", "inpaint-box", "-o", tmp_path / "r.png", "-q"], capsys)
    _one_error(rc, err, "bomb.png has more than", "pixels, the most an image may have")
    assert not (tmp_path / "r.png").exists()


# -- F19: sample -n checked against disk and memory up front ---------------------------------


def test_sample_count_beyond_disk_or_memory_is_one_line(tmp_path, capsys):
    rc, err, _ = _run(["sample", MSM, "-n", "10000000", "-o", tmp_path / "s.h5", "-q"], capsys)
    _one_error(rc, err, "-n 10000000 samples needs about", "draw fewer with -n")
    assert _files(tmp_path) == set()


# -- F24: prep's acceleration is checked as recon's ------------------------------------------


def test_prep_accel_beyond_the_mask_is_refused_as_in_recon(tmp_path, scan, capsys):
    rc, err, _ = _run(["prep-fastmri", scan.parent, tmp_path / "prep", "--accel", "1e9", "--size", "32", "-q"],
                      capsys)
    _one_error(rc, err, "acceleration 1e+09 keeps", "center columns", "lower --accel")
    rc, err, _ = _run(["recon", scan, "-R", "1e9", "-m", "zero-filled", "-o", tmp_path / "o.h5", "-q"], capsys)
    _one_error(rc, err, "acceleration 1e+09 keeps", "center columns", "lower --accel")
    assert not (tmp_path / "prep").exists()


# -- F25: NaN and inf floats ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_restore_noise_not_finite_is_one_line(value, tmp_path, capsys):
    src = _grey_png(tmp_path / "g.png")
    rc, err, _ = _run(["restore", src, "-t", "inpaint-box", "--simulate", "--noise", value,
                       "-o", tmp_path / "r.png", "-q"], capsys)
    _one_error(rc, err, "--noise must be a finite number")
    assert not (tmp_path / "r.png").exists()


def test_train_config_float_not_finite_is_one_line(tmp_path, capsys):
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["train"]["lr"] = float("inf")
    path = tmp_path / "inf_lr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, err, _ = _run(["train", path, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, "'train.lr' must be a finite number")


# -- worth deciding: upper bounds, grayscale PNGs, --accel with a file's mask, zero slices ---


@pytest.mark.parametrize("flag, value, needle", [
    ("--w", "1000000", "--w must be an integer in [1, 1000]"),
    ("--cs-iters", "1e9", "Invalid value for '--cs-iters'"),  # an integer option: Click refuses the text
    ("--cs-iters", "1000000000", "--cs-iters must be an integer in [1, 100000]"),
])
def test_solver_counts_have_upper_bounds(flag, value, needle, tmp_path, scan, capsys):
    rc, err, _ = _run(["recon", scan, "-R", "4", "-m", "cs", flag, value, "-o", tmp_path / "o.h5", "-q"], capsys)
    _one_error(rc, err, needle)
    assert not (tmp_path / "o.h5").exists()


def test_settings_file_w_has_the_same_bound(tmp_path, scan, capsys):
    settings = tmp_path / "s.yaml"
    settings.write_text("w: 1000000\n")
    rc, err, _ = _run(["recon", scan, "-R", "4", "-m", "msm", "--settings", settings, "-o", tmp_path / "o.h5",
                       "-q"], capsys)
    _one_error(rc, err, "s.yaml: w must be an integer in [1, 1000]")  # the words of --w


def test_restore_takes_a_grayscale_png_for_an_rgb_model(tmp_path, capsys):
    src = _grey_png(tmp_path / "grey.png", 32)
    out = tmp_path / "r.png"
    rc, err, _ = _run(["restore", src, "-t", "inpaint-box", "-o", out, "--steps", "1", "--samples", "1",
                       "--device", "cpu", "-q"], capsys)
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (32, 32)


def test_accel_on_a_file_with_its_own_mask_is_noted_and_not_recorded(tmp_path, capsys):
    src = write_fake_fastmri(tmp_path / "in" / "u.h5", "undersampled", num_slices=2, size=32, num_coils=4)
    out = tmp_path / "o.h5"
    rc, err, _ = _run(["recon", src, "-R", "8", "-m", "zero-filled", "-o", out, "-q"], capsys)
    assert rc == 0, err
    assert err == ["note: u.h5 carries its own mask (R = 4.00); --accel 8 is ignored for it"]
    with h5py.File(out) as f:
        assert f.attrs["acceleration"] == pytest.approx(4.0)
        assert json.loads(f.attrs["mrimsm_record"])["accel"] is None


def test_accel_with_own_mask_in_a_directory_is_done_once(tmp_path, capsys):
    src = tmp_path / "in"
    write_fake_fastmri(src / "u.h5", "undersampled", num_slices=2, size=32, num_coils=4)
    args = ["recon", src, "-R", "8", "-m", "zero-filled", "-o", tmp_path / "out", "-q"]
    rc, err, out = _run(args, capsys)
    assert rc == 0 and "--accel 8 is ignored for it" in out, (err, out)
    rc, err, out = _run(args, capsys)
    assert rc == 0 and "skipped u.h5: done before with the same settings" in out, (err, out)


def test_prep_skips_all_zero_slices_with_a_warning(tmp_path, capsys):
    raw = tmp_path / "raw"
    src = write_fake_fastmri(raw / "z.h5", "full", num_slices=3, size=64, num_coils=4)
    with h5py.File(src, "a") as f:
        f["kspace"][1] = 0
    rc, err, _ = _run(["prep-fastmri", raw, tmp_path / "prep", "--size", "64", "--skip-last", "0",
                       "--val-fraction", "0", "-q"], capsys)
    assert rc == 0, err
    assert err == ["warning: z.h5: skipped 1 all-zero slice(s): 1"]
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["counts"]["zero_slices_skipped"] == 1
    assert manifest["shards"][0]["slices"] == [0, 2] and manifest["shards"][0]["zero_slices"] == [1]
