"""Coil compression (mrimsm.data.coil_compression) and `recon --coils` / `prep-fastmri --coils`."""

from __future__ import annotations

import numpy as np
import pytest

from mrimsm.data.coil_compression import calibration_columns, compress_coils, compression_matrices
from mrimsm.data.fastmri_io import rss
from mrimsm.errors import MrimsmError


def _mask(s: int, w: int, acs: int = 8, every: int = 3) -> np.ndarray:
    m = np.zeros((s, w), dtype=bool)
    m[:, ::every] = True
    m[:, w // 2 - acs // 2: w // 2 + acs - acs // 2] = True
    return m


def _rank_n_kspace(s=2, c=8, n=3, h=16, w=24, seed=0):
    """k-space of ``c`` coils that are ``n`` independent signals mixed per slice."""
    rng = np.random.default_rng(seed)
    virt = rng.standard_normal((s, n, h, w)) + 1j * rng.standard_normal((s, n, h, w))
    mix = rng.standard_normal((s, c, n)) + 1j * rng.standard_normal((s, c, n))
    return np.einsum("scn,snhw->schw", mix, virt).astype(np.complex64)


def test_rank_n_signal_is_compressed_losslessly():
    k = _rank_n_kspace()
    mask = _mask(2, 24)
    km = k * mask[:, None, None, :]
    out = compress_coils(km, mask, 3)
    assert out.shape == (2, 3, 16, 24) and out.dtype == np.complex64
    ref = rss(km)
    np.testing.assert_allclose(rss(out), ref, rtol=0, atol=1e-5 * ref.max())
    assert np.all(out[..., ~mask[0]] == 0)  # unacquired columns stay empty
    _, kept = compression_matrices(km, mask, 3)
    np.testing.assert_allclose(kept, 1.0, atol=1e-6)


def test_energy_kept_grows_with_n_and_rows_are_orthonormal():
    rng = np.random.default_rng(1)
    k = (rng.standard_normal((1, 8, 12, 20)) + 1j * rng.standard_normal((1, 8, 12, 20))).astype(np.complex64)
    mask = _mask(1, 20, acs=6)
    shares = []
    for n in range(1, 9):
        mats, kept = compression_matrices(k, mask, n)
        np.testing.assert_allclose(mats[0] @ mats[0].conj().T, np.eye(n), atol=1e-5)
        energy = np.sum(np.abs(compress_coils(k * mask[:, None, None, :], mask, n)) ** 2)
        shares.append((kept[0], energy))
    assert all(a[0] <= b[0] + 1e-12 for a, b in zip(shares, shares[1:]))
    assert all(a[1] <= b[1] * (1 + 1e-6) for a, b in zip(shares, shares[1:]))
    assert shares[-1][0] == pytest.approx(1.0)


def test_deterministic_and_phase_fixed():
    k = _rank_n_kspace(seed=2, c=6, n=6)
    mask = _mask(2, 24)
    a = compress_coils(k, mask, 4)
    b = compress_coils(k.copy(), mask.copy(), 4)
    assert np.array_equal(a, b)
    mats, _ = compression_matrices(k, mask, 4)
    big = np.abs(mats).argmax(axis=-1)
    lead = np.take_along_axis(mats, big[..., None], axis=-1)[..., 0]
    assert np.all(np.abs(lead.imag) < 1e-6) and np.all(lead.real > 0)


def test_only_acquired_calibration_columns_count():
    k = _rank_n_kspace(seed=3, c=6, n=6)
    mask = _mask(2, 24, acs=6)
    mats, _ = compression_matrices(k, mask, 3)
    junk = k.copy()
    cols = calibration_columns(mask[0])
    outside = np.setdiff1d(np.arange(24), cols)
    junk[..., outside] *= 100.0  # other columns, acquired or not, do not calibrate
    np.testing.assert_array_equal(compression_matrices(junk, mask, 3)[0], mats)
    junk[..., cols[0]] *= 2.0
    assert not np.allclose(compression_matrices(junk, mask, 3)[0], mats)


def test_calibration_columns():
    m = np.zeros(16, dtype=bool)
    m[[1, 6, 7, 8, 9, 13]] = True
    assert calibration_columns(m).tolist() == [6, 7, 8, 9]
    m[8] = False  # no centre: every acquired column
    assert calibration_columns(m).tolist() == [1, 6, 7, 9, 13]


def test_no_op_and_bad_n():
    k = _rank_n_kspace(c=4, n=2)
    mask = _mask(2, 24)
    assert np.array_equal(compress_coils(k, mask, 4), k)
    assert np.array_equal(compress_coils(k, mask, 9), k)
    assert np.array_equal(compress_coils(k, mask, None), k)
    for bad in (0, -2, "x", 1.5):
        with pytest.raises(MrimsmError, match="--coils must be an integer >= 1"):
            compress_coils(k, mask, bad)


# -- recon --coils -------------------------------------------------------------------


def _sim(path, size=32, coils=8, slices=2):
    from mrimsm.data.simulate import simulate_volume_file

    return simulate_volume_file(path, "axial", list(range(80, 80 + 2 * slices, 2)), size, coils, 0.01, True, 0)


def test_prepare_volume_compresses_before_the_maps(tmp_path):
    from mrimsm import recon

    src = _sim(tmp_path / "a.h5")
    full = recon.prepare_volume(src, 4, 0)
    small = recon.prepare_volume(src, 4, 0, coils=4)
    assert full.kspace.shape[1] == 8 and small.kspace.shape[1] == 4 and small.maps.shape == small.kspace.shape
    assert small.file_coils == 8 and small.coils == 4 and 0.9 < small.coil_energy_kept <= 1.0
    assert full.coil_energy_kept is None and recon.coils_note(full) is None
    same = recon.prepare_volume(src, 4, 0, coils=8)
    assert np.array_equal(same.kspace, full.kspace) and same.coil_energy_kept is None
    assert recon.coils_note(same) == "--coils 8: a.h5 has 8 coils; no coil compression"
    a = recon.run_method(small, "sense")
    b = recon.run_method(full, "sense")
    assert a.metrics["psnr"] > b.metrics["psnr"] - 1.0


def test_recon_cli_coils(tmp_path, capsys):
    import h5py

    from mrimsm.cli.main import main

    src = _sim(tmp_path / "a.h5")
    assert main(["recon", "-R", "4", "-m", "zero-filled", str(src), "-o", str(tmp_path / "c4.h5"), "--coils", "4", "-q"]) == 0
    out = capsys.readouterr().out
    assert "coil compression: 8 -> 4 virtual coils, keeping >= " in out
    with h5py.File(tmp_path / "c4.h5") as f:
        assert '"coils": 4' in f.attrs["mrimsm_record"]
    assert main(["recon", "-R", "4", "-m", "zero-filled", str(src), "-o", str(tmp_path / "c9.h5"), "--coils", "9", "-q"]) == 0
    assert "note: --coils 9: a.h5 has 8 coils; no coil compression" in capsys.readouterr().err
    assert main(["recon", "-R", "4", "-m", "zero-filled", str(src), "-o", str(tmp_path / "c0.h5"), "--coils", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --coils must be an integer >= 1, got 0"  # --coils is an int option
    assert not (tmp_path / "c0.h5").exists()


def test_scans_with_many_coils_are_compressed_by_default(tmp_path):
    """Above DEFAULT_ABOVE coils and without --coils, recon compresses to DEFAULT_VIRTUAL
    virtual coils and says so; --coils C (the file's count) keeps them all; at or below the
    threshold nothing changes."""
    from mrimsm import recon
    from mrimsm.data.coil_compression import DEFAULT_ABOVE, DEFAULT_VIRTUAL, default_coils

    assert default_coils(DEFAULT_ABOVE) is None and default_coils(DEFAULT_ABOVE + 1) == DEFAULT_VIRTUAL
    many = DEFAULT_ABOVE + 4
    src = _sim(tmp_path / "many.h5", coils=many, slices=1)
    vol = recon.prepare_volume(src, 4, 0)
    assert vol.kspace.shape[1] == DEFAULT_VIRTUAL and vol.file_coils == many and vol.coils_default
    assert recon.coils_note(vol) == (f"many.h5 has {many} coils: compressed to {DEFAULT_VIRTUAL} virtual coils, "
                                     f"the default above {DEFAULT_ABOVE} coils (--coils {many} keeps them all)")
    kept = recon.prepare_volume(src, 4, 0, coils=many)
    assert kept.kspace.shape[1] == many and not kept.coils_default and kept.coil_energy_kept is None
    few = recon.prepare_volume(_sim(tmp_path / "few.h5", coils=DEFAULT_ABOVE, slices=1), 4, 0)
    assert few.kspace.shape[1] == DEFAULT_ABOVE and recon.coils_note(few) is None


# -- prep-fastmri --coils --------------------------------------------------------------


def test_prep_coils(fastmri_factory, tmp_path, capsys):
    import hashlib
    import json

    import h5py

    from mrimsm.cli.main import main
    from mrimsm.data.prep import PrepOptions

    raw = fastmri_factory("vol0.h5", "full", num_slices=2, size=64, num_coils=8, seed=0).parent
    base = ["prep-fastmri", str(raw), "--size", "64", "--skip-last", "0", "--val-fraction", "0", "-q"]
    assert main(base[:2] + [str(tmp_path / "full")] + base[2:]) == 0
    assert main(base[:2] + [str(tmp_path / "c4")] + base[2:] + ["--coils", "4"]) == 0
    full = json.loads((tmp_path / "full" / "manifest.json").read_text())
    c4 = json.loads((tmp_path / "c4" / "manifest.json").read_text())
    assert "coils" not in full["params"] and c4["params"]["coils"] == 4
    # without --coils the hash is that of the params without the key: as before --coils existed
    text = json.dumps(full["params"], sort_keys=True, default=str)
    assert full["params_hash"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert PrepOptions(**full["params"]).params_hash() == full["params_hash"]
    assert c4["params_hash"] != full["params_hash"]
    with h5py.File(tmp_path / "c4" / c4["shards"][0]["shard"]) as f:
        assert f["y"].shape == (2, 4, 64, 64) and f["maps"].shape == (2, 4, 64, 64)
        y4, mask = f["y"][()], f["mask"][()]
    with h5py.File(tmp_path / "full" / full["shards"][0]["shard"]) as f:
        y8 = f["y"][()]
    assert np.all(y4 * ~mask[:, None, None, :].astype(bool) == 0)
    e4, e8 = (np.sum(np.abs(y) ** 2) for y in (y4, y8))
    assert 0.95 * e8 < e4 <= e8 * 1.001  # the same scale, most of the energy kept
    capsys.readouterr()
    assert main(base[:2] + [str(tmp_path / "c8")] + base[2:] + ["--coils", "8"]) == 0
    assert "warning: --coils 8: vol0.h5 has 8 coils; no coil compression" in capsys.readouterr().err
    assert main(base[:2] + [str(tmp_path / "bad")] + base[2:] + ["--coils", "0"]) == 2
    # --coils is a typed option with a range: Click refuses 0 while parsing
    assert capsys.readouterr().err.strip() == ("error: Invalid value for '--coils': Input should be greater than or "
                                               "equal to 1 (see: mrimsm prep-fastmri --help)")
    assert not (tmp_path / "bad").exists()
