"""The shipped default models: present, small, loadable, and used by `mrimsm recon`
without a path (the posterior run is shortened here; `make demo` runs the full one)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mrimsm.cli.main import main
from mrimsm.baselines.ssdu import DEFAULT_CHECKPOINT as SSDU_DEFAULT
from mrimsm.checkpoint import load_checkpoint
from mrimsm.diffusion.posterior import DEFAULT_CHECKPOINT as MSM_DEFAULT

MAX_BYTES = 20 * 1024 * 1024


def test_default_checkpoints_are_the_first_shipped_ones():
    from mrimsm.diffusion.shipped import SHIPPED_PRIORS, SHIPPED_SSDU

    assert MSM_DEFAULT == SHIPPED_PRIORS[0].path and SSDU_DEFAULT == SHIPPED_SSDU[0].path


def test_default_checkpoints_are_shipped_small_and_describe_their_data():
    for path, method in [(MSM_DEFAULT, "msm"), (SSDU_DEFAULT, "ssdu")]:
        assert path.is_file(), path
        assert path.stat().st_size <= MAX_BYTES
        ckpt = load_checkpoint(path)
        assert ckpt["method"] == method
        assert "optimizer" not in ckpt  # inference-only export
        assert ckpt["meta"]["export"]["inference_only"]
    meta = load_checkpoint(MSM_DEFAULT)["meta"]
    assert meta["operator"] == "MultiCoilMRI" and list(meta["image_shape"]) == [64, 64]


def test_recon_uses_the_shipped_models_without_a_path(fastmri_sample, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([
        "recon", str(fastmri_sample), "--accel", "6", "-o", str(out), "--method", "msm", "--method", "ssdu",
        "--steps", "4", "--w", "1", "--samples", "2", "--threads", "1", "-q",
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    files = sorted(out.glob("*.h5"))
    assert len(files) == 2
    for f in files:
        with h5py.File(f) as h:
            rec = h["reconstruction"][()]
            assert rec.shape == (4, 64, 64) and np.isfinite(rec).all() and rec.max() > 0
            if ".msm." in f.name:
                assert h["uncertainty"].shape == (4, 64, 64)
    assert "msm" in captured.out and "ssdu" in captured.out
    assert "msm model: shipped 64 x 64 demonstration prior default_msm.pt" in captured.out
    assert "solver defaults: 4 steps, w 1, 2 samples, start sense at t0 0.3" in captured.out


def test_shipped_prior_chosen_by_scan_size(monkeypatch, tmp_path):
    import pytest

    from mrimsm.diffusion import shipped
    from mrimsm.errors import MrimsmError

    assert shipped.choose_shipped_prior((64, 64)).file == "default_msm.pt"
    for bad in [(100, 100), (64, 128), (440, 440), (320, 420), (191, 256)]:
        with pytest.raises(MrimsmError, match="no shipped MSM model reconstructs"):
            shipped.choose_shipped_prior(bad)
    # the 256 slot: any side 192..416; a one-line error while its file is missing
    monkeypatch.setattr(shipped, "ASSETS", tmp_path)
    for shape in [(256, 256), (320, 320), (192, 416), (320, 396), (300, 330)]:
        with pytest.raises(MrimsmError, match="default_msm256.pt is not installed"):
            shipped.choose_shipped_prior(shape)
    (tmp_path / "default_msm256.pt").write_bytes(b"")
    assert shipped.choose_shipped_prior((320, 320)).file == "default_msm256.pt"


def test_size_range_of_a_checkpoint():
    import pytest

    from mrimsm.diffusion.shipped import SHIPPED_PRIORS, check_scan_size, size_range
    from mrimsm.errors import MrimsmError

    native = {"data": {"simulated": {"pixel": "native"}}, "model": {"channel_mult": [1, 2, 4, 4, 4, 4]}}
    assert size_range(native, (256, 256)) == (192, 416)
    prior = SHIPPED_PRIORS[1]  # the table entry agrees with the rule for its config
    assert (prior.min_side, prior.max_side) == size_range(native, (256, 256))
    for ok in [(320, 320), (320, 396), (330, 330), (192, 416)]:  # the UNet pads what it cannot halve
        check_scan_size(native, (256, 256), ok, "m.pt")
    fit = {"data": {"simulated": {"size": 64}}, "model": {"channel_mult": [1, 2, 4]}}
    assert size_range(fit, (64, 64)) == (64, 64)
    check_scan_size(fit, (64, 64), (64, 64), "m.pt")
    with pytest.raises(MrimsmError, match=r"m.pt reconstructs 64 x 64 only"):
        check_scan_size(fit, (64, 64), (128, 128), "m.pt")
    with pytest.raises(MrimsmError, match=r"reconstructs sides 192-416; train a model"):
        check_scan_size(native, (256, 256), (440, 440), "m.pt")
    with pytest.raises(MrimsmError, match="192-416"):
        check_scan_size(native, (256, 256), (180, 256), "m.pt")


def test_the_model_line_compares_the_scan_pixels_with_the_training_pixels():
    from mrimsm.diffusion.shipped import pixel_note, trained_pixel_mm

    native = {"data": {"simulated": {"size": 256, "pixel": "native", "scales": [1.0, 0.7, 1.2]}}}
    assert trained_pixel_mm(native) == pytest.approx((1 / 1.2, 1 / 0.7))
    assert trained_pixel_mm({"data": {"simulated": {"size": 256, "pixel": "native"}}}) == (1.0, 1.0)
    assert trained_pixel_mm({"data": {"simulated": {"size": 64}}}) == pytest.approx((233 / 64,) * 2)
    assert trained_pixel_mm({"data": {"prepared": "some/dir"}}) is None
    assert pixel_note(native, None) == ""
    assert pixel_note(native, (1.0, 1.1)) == "scan pixels 1.00 x 1.10 mm (trained at 0.83-1.43 mm)"
    assert pixel_note(native, (0.69, 0.69)).endswith("finer than the 0.83-1.43 mm the prior trained at: "
                                                    "expect lower quality")
    assert "coarser than" in pixel_note(native, (1.0, 1.8))
    assert pixel_note({"data": {"prepared": "d"}}, (0.69, 0.69)) == "scan pixels 0.69 x 0.69 mm"
    assert pixel_note({"data": {"simulated": {"size": 256, "pixel": "native"}}}, (1.0, 1.0)) == \
        "scan pixels 1.00 x 1.00 mm (trained at 1.00 mm)"


def test_shipped_models_beat_zero_filled_on_the_sample(fastmri_sample):
    """Quality guard of the demo: the shipped MSM (default solver, shortened to 20 steps,
    w = 2, one sample) and SSDU beat zero-filled on the demo sample at R = 6 by a stated
    margin in both conventions (full demo: zero-filled 20.79, SSDU 25.81 dB per slice; on this
    test's sample the brain-set SSDU is +2.98 dB fastMRI, +4.62 dB per slice over zero-filled)."""
    from mrimsm.recon import prepare_volume, run_method

    vol = prepare_volume(fastmri_sample, 6.0, 0)
    res = {m: run_method(vol, m, {"steps": 20, "w": 2, "samples": 1, "device": "cpu"})
           for m in ("zero-filled", "ssdu", "msm")}
    zf = res["zero-filled"].metrics
    for method, margin in (("msm", 1.5), ("ssdu", 2.5)):
        got = res[method].metrics
        assert got["psnr_slice"] >= zf["psnr_slice"] + margin, (method, got, zf)
        assert got["psnr"] >= zf["psnr"] + margin, (method, got, zf)
        assert got["ssim_slice"] > zf["ssim_slice"], (method, got, zf)


def test_the_256_prior_is_shipped_small_and_serves_a_320_by_396_scan(tmp_path, capsys):
    """The shipped 256 prior on a fastMRI-brain-like matrix: 640 x 396 k-space (readout and
    phase-encode oversampled), 320 x 320 reference; 396 is no multiple of the UNet's 32."""
    from mrimsm.data.simulate import mni_split_indices, simulate_volume_file
    from mrimsm.diffusion.shipped import SHIPPED_PRIORS, size_range

    prior = SHIPPED_PRIORS[1]
    assert prior.path.is_file() and prior.path.stat().st_size <= MAX_BYTES
    ckpt = load_checkpoint(prior.path)
    assert ckpt["method"] == "msm" and "optimizer" not in ckpt and ckpt["meta"]["export"]["inference_only"]
    assert list(ckpt["meta"]["image_shape"]) == [256, 256]
    assert ckpt["config"]["data"]["simulated"]["pixel"] == "native"
    assert size_range(ckpt["config"], (256, 256)) == (prior.min_side, prior.max_side)
    # one held-out slice at 320 x 320 in 396 columns (the 256 model's documented range), a few steps
    f = simulate_volume_file(tmp_path / "scan320.h5", "axial", mni_split_indices("axial", "heldout")[4:5], 320, 4,
                             0.01, True, seed=3, pixel="native", columns=396)
    with h5py.File(f) as h:
        assert h["kspace"].shape == (1, 4, 640, 396) and h["reconstruction_rss"].shape == (1, 320, 320)
    rc = main(["recon", str(f), "--accel", "6", "-o", str(tmp_path / "out"), "--method", "msm",
               "--steps", "2", "--w", "1", "--samples", "1", "--threads", "1", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "msm model: shipped 256 x 256 brain prior default_msm256.pt" in captured.out
    assert "; scan pixels 1.00 x 1.00 mm (trained at 0.83-1.43 mm); scan noise 0.0" in captured.out
    assert "(prior trained on 0.0100); solver" in captured.out
    assert "solver mrimsm/assets/default_msm256.recon.yaml: 2 steps, w 1, 1 samples, start cs at t0 0.05" in captured.out
    out = tmp_path / "out"
    with h5py.File(out if out.is_file() else next(out.glob("*.h5"))) as h:
        rec = h["reconstruction"][()]
    assert rec.shape == (1, 320, 320) and np.isfinite(rec).all() and rec.max() > 0


def test_a_shipped_prior_brings_its_solver_settings(tmp_path, monkeypatch):
    """recon's msm: the 256 prior's own settings file for its scans; single options on top;
    --settings and --checkpoint models get what they ask for / the general defaults."""
    import dataclasses

    import pytest

    from mrimsm.diffusion import shipped
    from mrimsm.diffusion.posterior import load_posterior_settings
    from mrimsm.diffusion.shipped import SHIPPED_PRIORS
    from mrimsm.errors import MrimsmError
    from mrimsm.recon.msm import MSMRecon

    prior = SHIPPED_PRIORS[1]
    own, general = load_posterior_settings(prior.settings_path), load_posterior_settings()
    assert prior.settings_path.is_file() and own != general
    m = MSMRecon({"steps": 3})
    rec = m.settings[f"shipped_settings {prior.file}"]
    assert rec["steps"] == 3 and (rec["w"], rec["t0"], rec["init"]) == (own.w, own.t0, own.init)
    assert m.settings["steps"] == 3 and m.settings["w"] == general.w
    f = tmp_path / "mine.yaml"
    f.write_text("posterior:\n  w: 2\n")
    m2 = MSMRecon({"settings": str(f)})
    assert m2.settings["w"] == 2 and not any(k.startswith("shipped_settings") for k in m2.settings)
    m3 = MSMRecon({"checkpoint": str(prior.path)})
    assert m3.settings["w"] == general.w and not any(k.startswith("shipped_settings") for k in m3.settings)

    # the settings file lives beside the checkpoint, in the package (tests/test_wheel.py: in the wheel)
    assert prior.settings_path.parent == prior.path.parent == shipped.ASSETS

    # an installed prior without its settings file: a one-line error when the method is
    # built (before any scan is read); --settings or --checkpoint do not need the file
    broken = dataclasses.replace(prior, settings="missing.recon.yaml")
    monkeypatch.setattr(shipped, "SHIPPED_PRIORS", (SHIPPED_PRIORS[0], broken))
    with pytest.raises(MrimsmError, match=r"256 x 256 brain prior default_msm256.pt has no solver settings file "
                                          r".*missing.recon.yaml; reinstall mrimsm, or pass --settings FILE"):
        MSMRecon({})
    MSMRecon({"settings": str(f)})
    MSMRecon({"checkpoint": str(prior.path)})


def test_a_missing_settings_file_stops_recon_before_any_work(fastmri_sample, tmp_path, monkeypatch, capsys):
    """A broken install (a shipped prior's settings file gone): one error line at start-up,
    before the file is read or coil maps are computed, whatever the scan's size."""
    import dataclasses

    from mrimsm.diffusion import shipped
    from mrimsm.recon import file as recon_file

    broken = dataclasses.replace(shipped.SHIPPED_PRIORS[1], settings="missing.recon.yaml")
    monkeypatch.setattr(shipped, "SHIPPED_PRIORS", (shipped.SHIPPED_PRIORS[0], broken))

    def no_work(*args, **kwargs):
        raise AssertionError("the scan was prepared before the error")

    monkeypatch.setattr(recon_file, "prepare_volume", no_work)
    rc = main(["recon", str(fastmri_sample), "--accel", "6", "-o", str(tmp_path / "out.h5"), "--method", "msm", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "default_msm256.pt has no solver settings file" in err[0] and "missing.recon.yaml" in err[0]
    assert not (tmp_path / "out.h5").exists()


def test_recon_ssdu_picks_the_shipped_ssdu_by_scan_size(monkeypatch, tmp_path, capsys):
    """64 x 64 -> default_ssdu.pt, sides 192-416 -> default_ssdu256.pt (one-line error when it is
    not installed), any other size a one-line error; --ssdu-checkpoint runs on any size."""
    import shutil

    import pytest

    from mrimsm.data.simulate import mni_split_indices, simulate_volume_file
    from mrimsm.diffusion import shipped
    from mrimsm.errors import MrimsmError

    f = simulate_volume_file(tmp_path / "scan256.h5", "axial", mni_split_indices("axial", "heldout")[4:5], 256, 4,
                             0.01, True, seed=3, pixel="native")
    assert shipped.choose_shipped_prior((64, 64), shipped.SHIPPED_SSDU).file == "default_ssdu.pt"
    with pytest.raises(MrimsmError, match="no shipped SSDU model reconstructs a 100 x 100.*--ssdu-checkpoint"):
        shipped.choose_shipped_prior((100, 100), shipped.SHIPPED_SSDU, "SSDU", "--ssdu-checkpoint")
    assert shipped.SHIPPED_SSDU[1].path.is_file()
    rc = main(["recon", str(f), "--accel", "6", "-o", str(tmp_path / "a.h5"), "--method", "ssdu", "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and "ssdu model: shipped 256 x 256 brain SSDU default_ssdu256.pt (trained at 256 x 256" in out
    with h5py.File(tmp_path / "a.h5") as h:
        rec, ref = h["reconstruction"][()], h5py.File(f)["reconstruction_rss"][()]
    assert rec.shape == ref.shape and np.isfinite(rec).all()
    assets = tmp_path / "assets"  # only the 64 x 64 SSDU installed
    assets.mkdir()
    shutil.copyfile(shipped.SHIPPED_SSDU[0].path, assets / "default_ssdu.pt")
    monkeypatch.setattr(shipped, "ASSETS", assets)
    rc = main(["recon", str(f), "--accel", "6", "-o", str(tmp_path / "b.h5"), "--method", "ssdu", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "default_ssdu256.pt is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "b.h5").exists()
    rc = main(["recon", str(f), "--accel", "6", "-o", str(tmp_path / "c.h5"), "--method", "ssdu",
               "--ssdu-checkpoint", str(assets / "default_ssdu.pt"), "-q"])
    assert rc == 0 and "ssdu model: " in capsys.readouterr().out
