"""The shipped default models: present, small, loadable, and used by `mrimsm recon`
without a path (the posterior run is shortened here; `make demo` runs the full one)."""

from __future__ import annotations

import h5py
import numpy as np

from cli.main import main
from mrimsm.baselines.ssdu import DEFAULT_CHECKPOINT as SSDU_DEFAULT
from mrimsm.checkpoint import load_checkpoint
from mrimsm.diffusion.posterior import DEFAULT_CHECKPOINT as MSM_DEFAULT

MAX_BYTES = 20 * 1024 * 1024


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
