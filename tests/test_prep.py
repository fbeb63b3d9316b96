"""prep-fastmri end to end on simulated fastMRI files (16 coils, readout oversampled by 2)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from mrimsm.cli.main import main
from mrimsm.data.prep import volume as prep_volume
from mrimsm.data import simulate as sm
from mrimsm.data.prep import PrepOptions, prepare_dataset, prepare_simulated_dataset
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import PaperCartesian, achieved_acceleration

QUIET = dict(on_warning=lambda m: None)


def _raw(fastmri_factory, n=3, slices=3, noise=0.01, coils=16, acquisition="AXT2"):
    """``n`` simulated 64 x 64 volumes; returns the raw directory."""
    paths = [
        fastmri_factory(f"vol{i}.h5", "full", num_slices=slices, size=64, num_coils=coils, noise_std=noise,
                        seed=i, acquisition=acquisition)
        for i in range(n)
    ]
    return paths[0].parent


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_cli_end_to_end(fastmri_factory, tmp_path, capsys):
    raw = _raw(fastmri_factory, n=3)
    fastmri_factory("other.h5", "full", num_slices=2, size=64, num_coils=4, acquisition="AXT1")
    fastmri_factory("broken.h5", "truncated", size=64)
    out = tmp_path / "out"
    rc = main(["prep-fastmri", str(raw), str(out), "--size", "64", "--skip-last", "1",
               "--val-fraction", "0.34", "--noise-rho", "0.1", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning: skipping broken.h5" in captured.err and "truncated" in captured.err
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert (c["files_found"], c["files_used"], c["files_skipped"], c["files_filtered"]) == (5, 3, 1, 1)
    assert c["slices"] == {"train": 4, "val": 2}  # 3 slices - 1 edge slice, 2 + 1 volumes
    assert m["skipped"][0]["file"] == "broken.h5" and "truncated" in m["skipped"][0]["reason"]
    assert m["filtered"] == ["other.h5"]
    assert m["params"]["accel"] == 4 and m["params"]["noise_rho"] == 0.1 and m["params"]["center_lines"] == 5
    assert m["rho"] == 0.1 and m["mask"] == {"kind": "paper", "accel": 4.0, "center_lines": 5}
    assert m["versions"]["numpy"] and m["versions"]["torch"]
    used = [e for e in m["inputs"] if e["status"] == "used"]
    assert len(used) == 3 and all(len(e["sha256"]) == 64 and e["size"] > 0 for e in used)
    for s in m["shards"]:
        data, attrs = _read(out / s["shard"])
        keys = {"y", "mask", "maps", "scale", "slice_index"}
        assert set(data) == (keys | {"reference"} if s["split"] == "val" else keys)
        assert data["y"].shape == (2, 16, 64, 64) and data["y"].dtype == np.complex64
        assert data["maps"].shape == (2, 16, 64, 64) and data["mask"].shape == (2, 64)
        assert list(data["slice_index"]) == [0, 1] and attrs["source_file"] == s["name"]
        assert np.all(data["scale"] == data["scale"][0])  # one scale per volume
    assert "wrote" in captured.out


def test_espirit_agreement_and_normalization_in_shards(fastmri_factory, tmp_path):
    """Noiseless fully sampled input: the reference image the shards carry (maps
    from the 5 ACS columns of the R = 4 scan) agrees with the simulated image."""
    img = sm.mni_slices("axial", [80, 100], 64)
    sims = [sm.simulate_multicoil(im, 16, 0.0, True, seed=k) for k, im in enumerate(img)]
    raw = tmp_path / "raw"
    sm.write_fastmri_file(raw / "v.h5", np.stack([s["kspace"] for s in sims]),
                          np.stack([s["reconstruction_rss"] for s in sims]))
    opts = PrepOptions(size=64, skip_last=0, val_fraction=0.0)
    res = prep_volume.prepare_training_volume(np.stack([s["kspace"] for s in sims]), (64, 64), [0, 1], "v.h5",
                                              opts, reference=True)
    scale = float(res["scale"][0])
    for k, s in enumerate(sims):
        x = s["image"][32:96] * scale  # the object, on the normalized scale
        ref = x * np.exp(1j * np.angle(s["maps"][0, 32:96]))  # coil-0 phase convention
        est = res["reference"][k]
        g = np.vdot(est, ref)
        est = est * g / abs(g)
        psnr = 10 * np.log10(np.abs(ref).max() ** 2 / np.mean(np.abs(est - ref) ** 2))
        print(f"prep ESPIRiT agreement, slice {k}: {psnr:.1f} dB")
        assert psnr >= 35
    # normalization from the ACS columns: the true peak lands near 1
    peak = max(np.abs(s["image"]).max() for s in sims) * scale
    assert 0.85 < peak <= 1.0


def test_achieved_acceleration_and_noise_level(fastmri_factory, tmp_path):
    raw = _raw(fastmri_factory, n=2, slices=4, noise=0.0, coils=4)
    base = dict(size=64, skip_last=0, val_fraction=0.0, espirit_coarse=2)
    m0 = prepare_dataset(raw, tmp_path / "r0", PrepOptions(noise_rho=0.0, **base), **QUIET)
    m1 = prepare_dataset(raw, tmp_path / "r1", PrepOptions(noise_rho=0.1, **base), **QUIET)
    diffs = []
    for s0, s1 in zip(m0["shards"], m1["shards"]):
        a, _ = _read(tmp_path / "r0" / s0["shard"])
        b, _ = _read(tmp_path / "r1" / s1["shard"])
        np.testing.assert_array_equal(a["mask"], b["mask"])  # masks do not depend on rho
        for i, mask in enumerate(a["mask"]):
            d = b["y"][i] - a["y"][i]
            assert np.all(d[..., ~mask] == 0)  # noise only on measured entries
            diffs.append(d[..., mask])
            assert s0["achieved_acceleration"][i] == pytest.approx(achieved_acceleration(mask))
    d = np.concatenate([x.ravel() for x in diffs])
    assert d.real.std() == pytest.approx(0.1, rel=0.03) and d.imag.std() == pytest.approx(0.1, rel=0.03)
    # paper mask: 5 centre columns + each other column w.p. 1/4 -> expected R = 64 / (5 + 59 / 4)
    expected = 64 / PaperCartesian(4, 5).probability((64, 64)).sum()
    assert m0["achieved_acceleration"]["overall"] == pytest.approx(expected, rel=0.15)
    # fastMRI's random mask hits the request within 5 %
    m2 = prepare_dataset(raw, tmp_path / "r2", PrepOptions(mask_kind="random", center_fraction=0.08, **base), **QUIET)
    assert m2["achieved_acceleration"]["overall"] == pytest.approx(4.0, rel=0.05)
    assert m2["mask"]["kind"] == "random"


def test_resume_and_atomic_shards(fastmri_factory, tmp_path, monkeypatch):
    raw = _raw(fastmri_factory, n=3, slices=2, coils=4)
    out = tmp_path / "out"
    opts = PrepOptions(size=64, skip_last=0, val_fraction=0.0, espirit_coarse=2)
    # a run killed while preparing the second volume leaves no partial shard
    real = prep_volume.estimate_maps
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(prep_volume, "estimate_maps", dying)
    from mrimsm.errors import Interrupted

    with pytest.raises(Interrupted, match="1 of 3 files prepared"):  # the CLI: "interrupted: ...", exit 130
        prepare_dataset(raw, out, opts, **QUIET)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["vol0.h5"]
    assert not (out / "manifest.json").exists()
    (out / "train" / ".vol1.h5.x1.tmp").write_bytes(b"half")  # as left by a SIGKILL
    monkeypatch.setattr(prep_volume, "estimate_maps", real)
    starts = []
    m = prepare_dataset(raw, out, opts, on_start=starts.append, **QUIET)
    assert starts == [4] and m["counts"]["files_resumed"] == 1 and m["counts"]["files_used"] == 3
    assert sorted(p.name for p in (out / "train").iterdir()) == ["vol0.h5", "vol1.h5", "vol2.h5"]
    # a second run does nothing; a changed parameter is refused, and with overwrite redoes everything
    stamp = (out / "train" / "vol2.h5").stat().st_mtime_ns
    m = prepare_dataset(raw, out, opts, on_start=starts.append, **QUIET)
    assert starts[-1] == 0 and m["counts"]["files_resumed"] == 3
    assert (out / "train" / "vol2.h5").stat().st_mtime_ns == stamp
    opts.seed = 1
    with pytest.raises(MrimsmError, match="prepared with other parameters .*seed 0 -> 1.*--overwrite"):
        prepare_dataset(raw, out, opts, on_start=starts.append, **QUIET)
    assert (out / "train" / "vol2.h5").stat().st_mtime_ns == stamp and (out / "manifest.json").is_file()
    opts.overwrite = True
    m = prepare_dataset(raw, out, opts, on_start=starts.append, **QUIET)
    assert starts[-1] == 6 and m["counts"]["files_resumed"] == 0


def test_workers_give_identical_shards(fastmri_factory, tmp_path):
    raw = _raw(fastmri_factory, n=2, slices=2, coils=4)
    opts = dict(size=64, skip_last=0, val_fraction=0.0, noise_rho=0.05, espirit_coarse=2)
    one = prepare_dataset(raw, tmp_path / "w1", PrepOptions(workers=1, **opts), **QUIET)
    two = prepare_dataset(raw, tmp_path / "w2", PrepOptions(workers=2, **opts), **QUIET)
    assert one["params_hash"] == two["params_hash"]
    for s in one["shards"]:
        a, _ = _read(tmp_path / "w1" / s["shard"])
        b, _ = _read(tmp_path / "w2" / s["shard"])
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_slice_selection(fastmri_factory, tmp_path):
    raw = _raw(fastmri_factory, n=2, slices=5, coils=4)
    base = dict(size=64, val_fraction=0.0, espirit_coarse=2)
    m = prepare_dataset(raw, tmp_path / "k", PrepOptions(slices_per_volume=1, skip_last=1, **base), **QUIET)
    assert [s["slices"] for s in m["shards"]] == [[1], [1]]  # the centre of 0..3
    lst = tmp_path / "list.csv"
    lst.write_text("file,slice\nvol1.h5,4\nvol1.h5,0\nmissing.h5,2\n")
    m = prepare_dataset(raw, tmp_path / "l", PrepOptions(slice_list=str(lst), **base), **QUIET)
    assert [(s["name"], s["slices"]) for s in m["shards"]] == [("vol1.h5", [0, 4])]


def test_undersampled_input_is_skipped(fastmri_factory, tmp_path):
    raw = _raw(fastmri_factory, n=1, slices=2, coils=4)
    fastmri_factory("under.h5", "undersampled", size=64)
    warnings_seen = []
    m = prepare_dataset(raw, tmp_path / "o", PrepOptions(size=64, skip_last=0, acquisition=None, espirit_coarse=2),
                        on_warning=warnings_seen.append)
    assert m["counts"]["files_used"] == 1 and m["skipped"][0]["file"] == "under.h5"
    assert "already undersampled" in warnings_seen[0]


def _cli(args, capsys):
    rc = main(["prep-fastmri", *map(str, args), "-q"])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--accel", "0.5"], "Invalid value for '--accel'"),  # the typed option's range
        (["--accel", "nan"], "Invalid value for '--accel'"),
        (["--size", "40"], "multiple of 16"),
        (["--acquisition", "AXFLAIR"], "no file in"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--workers", "0"], "--workers"),
        (["--noise-rho", "-1"], "--noise-rho"),
        (["--slices-per-volume", "2", "--slice-list", "x.csv"], "not both"),
        (["--slice-list", "/nonexistent.csv"], "slice list not found"),
        (["--mask", "spiral"], "'spiral' is not one of 'paper', 'random', 'equispaced'"),
        (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),  # what the range cannot say
        (["--espirit-backend", "bart"], "'bart' is not one of 'torch', 'sigpy'"),
        (["--coils", "0"], "Invalid value for '--coils'"),
        (["--espirit-coarse", "32"], "--espirit-coarse"),
        (["--kernel-width", "1"], "--kernel-width"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_options_exit_2(fastmri_factory, tmp_path, capsys, extra, message):
    raw = _raw(fastmri_factory, n=1, slices=1, coils=2)
    rc, err = _cli([raw, tmp_path / "out", "--size", "64", *extra], capsys)
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_directories_exit_2(fastmri_factory, tmp_path, capsys):
    rc, err = _cli([tmp_path / "nope", tmp_path / "out"], capsys)
    assert rc == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, err = _cli([tmp_path / "empty", tmp_path / "out"], capsys)
    assert rc == 2 and "no .h5 files" in err
    raw = _raw(fastmri_factory, n=1, slices=1, coils=2)
    (tmp_path / "afile").write_text("x")
    rc, err = _cli([raw, tmp_path / "afile" / "out", "--size", "64"], capsys)
    assert rc == 2 and "is a file, not a directory" in err
    rc, err = _cli([raw, raw, "--size", "64"], capsys)
    assert rc == 2 and "must differ" in err
    rc, err = _cli([tmp_path / "afile", tmp_path / "out"], capsys)
    assert rc == 2 and "not a directory" in err


def test_strict_makes_corrupt_files_fatal(fastmri_factory, tmp_path, capsys):
    raw = _raw(fastmri_factory, n=1, slices=1, coils=2)
    fastmri_factory("bad.h5", "nan", size=64)
    rc, err = _cli([raw, tmp_path / "out", "--size", "64", "--skip-last", "0", "--strict"], capsys)
    assert rc == 2 and "NaN or Inf" in err and "--strict" in err
    # without --strict the NaN file (caught only when its k-space is read) is skipped
    rc, err = _cli([raw, tmp_path / "out", "--size", "64", "--skip-last", "0"], capsys)
    assert rc == 0 and "warning: skipping bad.h5" in err


def test_only_corrupt_files_is_an_error(fastmri_factory, tmp_path, capsys):
    fastmri_factory("a.h5", "not_hdf5")
    rc, err = _cli([tmp_path / "raw", tmp_path / "out"], capsys)
    assert rc == 2 and "no usable file" in err


def test_prepare_simulated_dataset_uses_training_slices_only(tmp_path):
    out = prepare_simulated_dataset(tmp_path / "sim", size=64, num_coils=4, rho=0.1, step=24, slices_per_file=4)
    m = json.loads((out / "manifest.json").read_text())
    held = {o: set(sm.mni_split_indices(o, "heldout", step=1)) for o in sm.ORIENTATIONS}
    used = m["simulation"]["slices"]
    assert all(used[o] and not set(used[o]) & held[o] for o in sm.ORIENTATIONS)
    n = sum(len(v) for v in used.values())
    assert m["counts"]["slices"]["train"] + m["counts"]["slices"]["val"] == n
    assert m["rho"] == 0.1 and m["mask"]["center_lines"] == 5 and m["params"]["acquisition"] is None
    from mrimsm.data.datasets import MeasurementDataset

    assert len(MeasurementDataset(out, "train")) == m["counts"]["slices"]["train"]
    before = (out / "manifest.json").stat().st_mtime_ns
    prepare_simulated_dataset(tmp_path / "sim", size=64, num_coils=4, rho=0.1, step=24, slices_per_file=4)
    assert (out / "manifest.json").stat().st_mtime_ns == before  # cached
    with pytest.raises(MrimsmError, match="multiple of 16"):
        prepare_simulated_dataset(tmp_path / "bad", size=50)


def test_prepare_simulated_dataset_with_scales(tmp_path):
    kw = dict(size=64, num_coils=2, rho=0.1, step=24, slices_per_file=4, pixel="native")
    one = prepare_simulated_dataset(tmp_path / "one", **kw)
    two = prepare_simulated_dataset(tmp_path / "two", scales=[1.0, 0.5], workers=2, **kw)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert "scales" not in m1["simulation"] and m2["simulation"]["scales"] == [1.0, 0.5]
    n1 = sum(m1["counts"]["slices"].values())
    assert sum(m2["counts"]["slices"].values()) == 2 * n1
    names = {s["name"] for s in m2["shards"]}
    assert {s["name"] for s in m1["shards"]} < names and any(n.endswith("_x0.5.h5") for n in names)


def test_manifest_records_measured_and_total_noise(fastmri_factory, tmp_path):
    """The raw files' own noise (0.02 in image units) is measured, scaled like the data,
    and added in quadrature to --noise-rho; the trainer's ``rho: null`` reads the total."""
    from mrimsm.data.training_data import data_noise

    raw = _raw(fastmri_factory, n=2, slices=2, noise=0.02, coils=8)
    base = dict(size=64, skip_last=0, val_fraction=0.0, espirit_coarse=2)
    m = prepare_dataset(raw, tmp_path / "p", PrepOptions(noise_rho=0.03, **base), **QUIET)
    for entry in m["shards"]:
        assert entry["noise_measured"] == pytest.approx(0.02 * entry["scale"], rel=0.05)
        assert entry["noise_total"] == pytest.approx(np.hypot(0.02 * entry["scale"], 0.03), rel=0.02)
        _, attrs = _read(tmp_path / "p" / entry["shard"])
        assert attrs["noise_total"] == pytest.approx(entry["noise_total"])
    assert m["noise"]["total"] == pytest.approx(np.median([e["noise_total"] for e in m["shards"]]))
    assert data_noise(m) == pytest.approx(m["noise"]["total"]) and data_noise(m) > 0.03
    assert data_noise({"rho": 0.05}) == 0.05 and data_noise({}) is None
    # a resumed run reads the noise back from the finished shards
    again = prepare_dataset(raw, tmp_path / "p", PrepOptions(noise_rho=0.03, **base), **QUIET)
    assert again["noise"] == m["noise"]


@pytest.mark.parametrize("field, value, message", [
    ("accel", 0.5, "--accel must be a number >= 1"),
    ("accel", float("inf"), "--accel must be a number >= 1"),
    ("mask_kind", "spiral", "unknown mask kind"),
    ("espirit_backend", "bart", "unknown ESPIRiT backend"),
    ("size", 40, "multiple of 16"),
])
def test_options_validate_what_the_api_is_given(field, value, message):
    """The library API gets no CLI parsing: PrepOptions.validate refuses the same values."""
    with pytest.raises(MrimsmError, match=message):
        PrepOptions(**{field: value}).validate()


def test_tasks_are_frozen_and_name_their_shard(tmp_path):
    import dataclasses
    from pathlib import Path

    from mrimsm.data.prep import PrepTask

    task = PrepTask(path=Path("/raw/vol 1.h5"), slices=(0, 2), split="val", sha256="ab", params_hash="cd",
                    out_dir=tmp_path, options=PrepOptions())
    assert task.name == "vol 1.h5" and task.shard_rel == "val/vol 1.h5"
    assert task.shard_path == tmp_path / "val" / "vol 1.h5" and not task.done()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.split = "train"
