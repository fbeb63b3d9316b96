"""The recon pipeline (mrimsm.recon) and the `mrimsm recon` command."""

from __future__ import annotations

import importlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from fastmri import evaluate as fm_eval

from mrimsm.cli.main import main
from mrimsm import recon
from mrimsm.baselines.classical import zero_filled
from mrimsm.data.fastmri_io import crop_to_reconstruction, rss
from mrimsm.data.simulate import birdcage_coil_maps, simulate_volume_file, write_fastmri_file
from mrimsm.errors import MrimsmError
from mrimsm.physics.fft import ifft2c


def _sim_file(path, size=32, coils=4, slices=2, seed=0):
    """Simulated fastMRI brain-like file: MNI axial slices, readout oversampled by 2."""
    return simulate_volume_file(path, "axial", list(range(80, 80 + 2 * slices, 2)), size, coils, 0.01, True, seed)


def _rescaled(path, factor):
    """The same file with k-space and reference multiplied by ``factor`` (fastMRI's raw
    units are arbitrary, e.g. 1e-4)."""
    with h5py.File(path) as f:
        k, ref = f["kspace"][()], f["reconstruction_rss"][()]
    return write_fastmri_file(path, k * factor, ref * factor)


def _true_maps(kspace, mask):
    """The simulator's birdcage maps on the readout-cropped grid (replaces ESPIRiT)."""
    s, c, h, w = kspace.shape
    maps = birdcage_coil_maps(c, (2 * h, w), object_shape=(h, w))
    return np.repeat(crop_to_reconstruction(maps, (h, w))[None], s, 0)


def _files(d):
    return sorted(p.relative_to(d) for p in d.rglob("*"))


# -- small pieces ------------------------------------------------------------------


def test_crop_readout_equals_image_domain_crop():
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 3, 16, 8)) + 1j * rng.standard_normal((2, 3, 16, 8))).astype(np.complex64)
    mask = np.array([1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)
    k *= mask
    out = recon.crop_readout(k, 8)
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.complex64
    want = ifft2c(torch.from_numpy(k)).numpy()[..., 4:12, :]
    np.testing.assert_allclose(ifft2c(torch.from_numpy(out)).numpy(), want, atol=1e-5)
    assert np.all(out[..., ~mask] == 0)  # unsampled columns stay exactly empty
    assert recon.crop_readout(k, 16) is not None and np.array_equal(recon.crop_readout(k, 16), k)
    with pytest.raises(MrimsmError):
        recon.crop_readout(k, 32)


def test_crop_readout_reproduces_reference_rss(tmp_path):
    path = _sim_file(tmp_path / "a.h5")
    with h5py.File(path) as f:
        k, ref = f["kspace"][()], f["reconstruction_rss"][()]
    np.testing.assert_allclose(rss(recon.crop_readout(k, ref.shape[-2])), ref, atol=1e-5 * ref.max())


@pytest.mark.parametrize("good,value", [("6", 6.0), ("1", 1.0), (4, 4.0), ("2.5", 2.5)])
def test_parse_accel_good(good, value):
    assert recon.parse_accel(good) == value


@pytest.mark.parametrize("bad", ["abc", "0.5", "0", "-4", "nan", "inf", "", None])
def test_parse_accel_bad(bad):
    with pytest.raises(MrimsmError, match="--accel"):
        recon.parse_accel(bad)


def test_method_table():
    assert set(recon.available_methods()) == {"zero-filled", "sense", "cs", "ssdu", "msm"}
    assert recon.default_method() == "msm"
    for name, spec in recon.METHODS.items():  # every class string names a real ReconMethod class
        module, _, attr = spec.cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert isinstance(cls, type) and issubclass(cls, recon.MethodBase) and cls.name == name, name
    assert isinstance(recon.get_method("zero-filled").build({}), recon.ReconMethod)
    with pytest.raises(MrimsmError, match="unknown method 'nope'.*zero-filled"):
        recon.get_method("nope")


def test_a_broken_method_is_a_clear_error():
    for cls in ("mrimsm.recon.no_such_module:Method", "mrimsm.recon.classical:NoSuchMethod"):
        with pytest.raises(MrimsmError, match="method 'probe' is broken"):
            recon.MethodSpec("probe", cls).build({})


def test_importing_the_pipeline_loads_no_method():
    """The table is static: importing ``mrimsm.recon`` imports no method module."""
    code = "import sys, mrimsm.recon; print(sorted(m for m in sys.modules if m.startswith(('mrimsm.diffusion', 'mrimsm.baselines.ssdu', 'mrimsm.recon.msm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the pipeline ----------------------------------------------------------------


def test_masks_are_seeded_per_file_and_slice(tmp_path):
    path = _sim_file(tmp_path / "a.h5", size=64, slices=3)
    a = recon.prepare_volume(path, 4, seed=0, maps_fn=_true_maps)
    b = recon.prepare_volume(path, 4, seed=0, maps_fn=_true_maps)
    c = recon.prepare_volume(path, 4, seed=1, maps_fn=_true_maps)
    assert np.array_equal(a.mask, b.mask) and not np.array_equal(a.mask, c.mask)
    assert not np.array_equal(a.mask[0], a.mask[1])
    assert a.mask_source == "random" and a.mask.shape == (3, 64)
    assert a.achieved_accel == pytest.approx(4.0, rel=0.05)
    assert a.kspace.shape == (3, 4, 64, 64)  # readout oversampling removed
    assert np.all(a.kspace[..., ~a.mask[0]][0] == 0)


def test_file_mask_is_used_and_full_files_need_accel(tmp_path):
    full = _sim_file(tmp_path / "full.h5", size=32)
    with pytest.raises(MrimsmError, match="fully sampled"):
        recon.prepare_volume(full, None, maps_fn=_true_maps)
    with h5py.File(full) as f:
        k, ref = f["kspace"][()], f["reconstruction_rss"][()]
    mask = np.zeros(32, dtype=bool)
    mask[12:20] = True
    mask[[2, 27]] = True
    under = write_fastmri_file(tmp_path / "under.h5", k * mask, ref, mask=mask)
    v = recon.prepare_volume(under, 8, maps_fn=_true_maps)  # --accel is ignored here
    assert v.mask_source == "file" and v.accel is None
    assert np.array_equal(v.mask, np.stack([mask, mask]))
    assert v.achieved_accel == pytest.approx(3.2)


def test_too_much_acceleration_is_refused(tmp_path):
    path = _sim_file(tmp_path / "a.h5", size=32)
    with pytest.raises(MrimsmError, match="center columns"):
        recon.prepare_volume(path, 8, maps_fn=_true_maps)  # 4 columns left < 8 centre ones


def test_normalization_contract(tmp_path, monkeypatch):
    seen = []

    class Probe(recon.MethodBase):
        batch_slices = 1

        def __init__(self, options):
            pass

        def reconstruct(self, batch):
            seen.append(batch)
            images = zero_filled(batch.kspace, batch.mask, batch.maps)
            return recon.MethodOutput(images, uncertainty=images.abs() * 0 + 0.5)

    spec = recon.MethodSpec("probe-norm", Probe, needs_normalization=True)
    monkeypatch.setitem(recon.METHODS, "probe-norm", spec)
    src = _rescaled(_sim_file(tmp_path / "a.h5", size=64, slices=2), 1e-3)
    vol = recon.prepare_volume(src, 4, maps_fn=_true_maps)
    res = recon.run_method(vol, "probe-norm")
    plain = recon.run_method(vol, "zero-filled")
    assert len(seen) == 2 and all(b.scale == pytest.approx(vol.scale) for b in seen)
    from mrimsm.data.normalization import volume_peak

    ks = torch.cat([b.kspace for b in seen])
    masks = torch.cat([b.mask for b in seen]).reshape(len(ks), -1).numpy() > 0
    # the method saw the volume scaled as prep-fastmri scales training data: ACS-RSS peak 1
    assert volume_peak(ks, masks) == pytest.approx(1.0, rel=1e-5)
    assert vol.scale == pytest.approx(1e-3, rel=0.1)
    np.testing.assert_allclose(res.reconstruction, plain.reconstruction, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(res.uncertainty, 0.5 * vol.scale, rtol=1e-5)
    assert [b.slice_indices for b in seen] == [[0], [1]] and seen[0].seeds != seen[1].seeds
    pngs = recon.save_pngs(vol, res, tmp_path / "png")  # with an uncertainty panel
    assert [p.name for p in pngs] == ["a.probe-norm.slice000.png", "a.probe-norm.slice001.png"]


def test_pipeline_writes_fastmri_layout_with_metrics(tmp_path):
    src = _rescaled(_sim_file(tmp_path / "scan.h5", size=64, coils=4, slices=2), 1e-4)
    out = tmp_path / "out"
    report = recon.reconstruct_file(
        src, out, ["zero-filled", "cs"], accel="6", seed=3, maps_fn=_true_maps, png_dir=tmp_path / "png"
    )
    with h5py.File(src) as f:
        ref = f["reconstruction_rss"][()]
    assert set(report.outputs) == {"zero-filled", "cs"}
    for res in report.results:
        path = out / f"scan.{res.method}.h5"
        with h5py.File(path) as f:
            rec = f["reconstruction"][()]
            attrs = dict(f.attrs)
            assert f["mask"].shape == (2, 64)
        assert rec.dtype == np.float32 and rec.shape == ref.shape
        assert attrs["method"] == res.method and attrs["acceleration"] == 6.0
        # fastMRI's own evaluation code agrees with the stored metrics
        assert attrs["psnr"] == pytest.approx(float(fm_eval.psnr(ref, rec)), rel=1e-9)
        assert attrs["ssim"] == pytest.approx(fm_eval.ssim(ref, rec).item(), rel=1e-9)
        assert attrs["nmse"] == pytest.approx(float(fm_eval.nmse(ref, rec)), rel=1e-5)
        assert {"psnr_slice", "ssim_slice", "nmse_slice"} <= set(attrs)
    zf, cs = report.results
    assert cs.metrics["psnr"] > zf.metrics["psnr"]
    assert len(report.pngs) == 4 and all(p.stat().st_size > 1000 for p in report.pngs)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    table = recon.format_table(report.results, report.volume)
    assert "zero-filled" in table and "cs" in table and "R = 6" in table


def test_plan_outputs(tmp_path):
    src = tmp_path / "scan.h5"
    src.write_bytes(b"")
    assert recon.plan_outputs(src, tmp_path / "x.h5", ["cs"]) == {"cs": tmp_path / "x.h5"}
    assert recon.plan_outputs(src, tmp_path, ["cs"]) == {"cs": tmp_path / "scan.cs.h5"}
    two = recon.plan_outputs(src, tmp_path / "d", ["cs", "zero-filled"])
    assert two["zero-filled"] == tmp_path / "d" / "scan.zero-filled.h5"
    with pytest.raises(MrimsmError, match="is the input"):
        recon.plan_outputs(src, src, ["cs"])
    (tmp_path / "link.h5").symlink_to(src)
    with pytest.raises(MrimsmError, match="is the input"):
        recon.plan_outputs(src, tmp_path / "link.h5", ["cs"])
    with pytest.raises(MrimsmError, match="directory"):
        recon.plan_outputs(src, tmp_path / "two.h5", ["cs", "zero-filled"])


# -- the command -----------------------------------------------------------------


def test_cli_recon_two_methods_with_espirit(tmp_path, capsys, monkeypatch):
    src = _sim_file(tmp_path / "scan.h5", size=64, coils=8, slices=2)
    monkeypatch.chdir(tmp_path)
    rc = main(["recon", "--accel", "4", str(src), "-o", "out", "--method", "zero-filled", "--method", "cs",
               "--png", "png", "--seed", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    zf = next(line for line in lines if line.startswith("zero-filled")).split()
    cs = next(line for line in lines if line.startswith("cs ")).split()
    assert float(cs[1]) > float(zf[1])  # PSNR column: CS beats zero-filled
    assert (tmp_path / "out" / "scan.cs.h5").exists() and (tmp_path / "out" / "scan.zero-filled.h5").exists()
    assert len(list((tmp_path / "png").glob("*.png"))) == 4


def _nan_file(path):
    src = _sim_file(path.with_name("ok.h5"))
    with h5py.File(src) as f:
        k, ref = f["kspace"][()], f["reconstruction_rss"][()]
    k[0, 0, 3, 3] = np.nan
    write_fastmri_file(path, k, ref)
    src.unlink()
    return path


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--accel", "abc"], "--accel"),
        (["--accel", "0.5"], "--accel"),
        (["--accel", "nan"], "--accel"),
        (["--accel", "100"], "center columns"),
        ([], "fully sampled"),
        (["--accel", "4", "--method", "nope"], "unknown method"),
        (["--accel", "4", "-o", "{input}"], "is the input"),
        (["--accel", "4", "-o", "two.h5", "--method", "cs", "--method", "zero-filled"], "directory"),
        (["--accel", "4", "--cs-lambda", "-1"], "--cs-lambda"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, monkeypatch, args, expect):
    src = _sim_file(tmp_path / "scan.h5", size=32, coils=2, slices=1)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    if "--method" not in args:
        args = args + ["--method", "cs"]  # the default may be msm (needs a shipped model)
    rc = main(["recon", str(src)] + [a.replace("{input}", str(src)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert _files(tmp_path) == before  # nothing written, nothing half-written


def test_cli_missing_and_nan_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["recon", "--accel", "4", "-m", "cs", str(tmp_path / "missing.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = _nan_file(tmp_path / "nan.h5")
    before = _files(tmp_path)
    assert main(["recon", "--accel", "4", "-m", "zero-filled", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN" in err[0]
    assert _files(tmp_path) == before


def test_progress_over_slices_and_method_steps(tmp_path, monkeypatch):
    events = []

    class Bar:
        def __init__(self, desc, total):
            self.desc = desc
            events.append(("open", desc, total))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            events.append(("close", self.desc))

        def update(self, n=1):
            events.append(("update", self.desc, n))

    class Probe(recon.MethodBase):
        batch_slices = 1

        def __init__(self, options):
            pass

        def reconstruct(self, batch):
            for done in (1, 3):
                batch.on_step(done, 3)
            return recon.MethodOutput(zero_filled(batch.kspace, batch.mask, batch.maps))

    monkeypatch.setitem(recon.METHODS, "probe-steps", recon.MethodSpec("probe-steps", Probe))
    vol = recon.prepare_volume(_sim_file(tmp_path / "a.h5", slices=2), 4, maps_fn=_true_maps)
    recon.run_method(vol, "probe-steps", progress=Bar)
    steps = [e for e in events if e[1] == "probe-steps steps"]
    assert steps == [("open", "probe-steps steps", 3), ("update", "probe-steps steps", 1),
                     ("update", "probe-steps steps", 2), ("close", "probe-steps steps")] * 2
    assert [e for e in events if e[:2] == ("update", "probe-steps")] == [("update", "probe-steps", 1)] * 2


def test_images_are_kept_on_the_coil_support(tmp_path, monkeypatch):
    """Outside the maps' support no coil measures anything: the pipeline zeroes a method's
    output (and uncertainty) there, and leaves methods already in range(A^H) unchanged."""

    def cropped_maps(kspace, mask):
        maps = _true_maps(kspace, mask)
        maps[..., :, :6] = 0  # as ESPIRiT's crop does outside the object
        return maps

    class Probe(recon.MethodBase):
        batch_slices = 2

        def __init__(self, options):
            pass

        def reconstruct(self, batch):
            ones = torch.ones(batch.kspace.shape[:1] + batch.kspace.shape[2:], dtype=torch.complex64)
            return recon.MethodOutput(ones, uncertainty=ones.real.clone())

    monkeypatch.setitem(recon.METHODS, "probe-flat", recon.MethodSpec("probe-flat", Probe))
    vol = recon.prepare_volume(_sim_file(tmp_path / "a.h5", size=32, slices=2), 4, maps_fn=cropped_maps)
    res = recon.run_method(vol, "probe-flat")
    assert np.all(res.reconstruction[..., :6] == 0) and np.all(res.uncertainty[..., :6] == 0)
    assert np.all(res.reconstruction[..., 6:] == 1) and np.all(res.uncertainty[..., 6:] == 1)
    zf = recon.run_method(vol, "zero-filled").reconstruction
    want = zero_filled(torch.from_numpy(vol.kspace), torch.from_numpy(vol.mask[:, None, None, :].astype(np.float32)),
                       torch.from_numpy(vol.maps)).abs().numpy()
    np.testing.assert_allclose(zf, crop_to_reconstruction(want, vol.recon_size), rtol=1e-5, atol=1e-6)
