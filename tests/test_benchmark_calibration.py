"""The edge diagnostics of benchmarks/calibration.py."""

import numpy as np

from benchmarks.calibration import EDGE_FRACTION, edge_pixels, edge_share


def _disc(n: int = 64, r: float = 20.0) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n / 2 + 0.5
    return (np.hypot(y, x) < r).astype(np.float64)


def test_edge_pixels_are_the_rim_and_the_stated_fraction():
    ref = _disc()
    sup = np.ones_like(ref, dtype=bool)
    edges = edge_pixels(ref, sup, 0.03)  # the rim holds about 6 % of the pixels
    assert abs(edges.mean() - 0.03) < 0.002
    y, x = np.nonzero(edges)
    radius = np.hypot(y - 31.5, x - 31.5)
    assert np.all(np.abs(radius - 20) < 3)  # on the disc's rim, nowhere else


def test_edge_share_tells_edge_errors_from_uniform_ones():
    rng = np.random.default_rng(0)
    ref = _disc() + 0.5 * _disc(r=10)
    sup = ref > 0
    edges = edge_pixels(ref, sup)
    uniform = rng.normal(size=ref.shape)
    assert abs(edge_share(uniform, ref, sup) - edges[sup].mean()) < 0.05
    on_edges = np.where(edges, 1.0, 0.05)
    assert edge_share(on_edges, ref, sup) > 0.9
    assert edge_share(np.zeros_like(ref), ref, sup) == 0.0
    assert 0 < EDGE_FRACTION < 1
