"""Whitening of the search space (ranking/whitening.py): PCA with shrunk, powered eigenvalues, fitted on
catalog vectors, then every query and product vector is mapped and re-normalised."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.whitening import Whitening, fit_whitening


def data(n: int = 400, d: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1][:d]) + 3.0


def whitened_cov(w: Whitening, x: np.ndarray) -> np.ndarray:
    y = (x - w.mean.astype(np.float64)) @ w.projection.astype(np.float64)
    return np.cov(y, rowvar=False)


def test_full_power_without_shrinkage_gives_identity_covariance():
    x = data()
    w = fit_whitening(x, dims=6, power=1.0, shrink=0.0)
    assert np.allclose(w.mean, x.mean(axis=0), atol=1e-5)
    assert np.allclose(whitened_cov(w, x), np.eye(6), atol=1e-3)


def test_power_zero_keeps_the_principal_axes_in_order_of_variance():
    x = data()
    w = fit_whitening(x, dims=4, power=0.0, shrink=0.0)
    assert np.allclose(w.projection.T @ w.projection, np.eye(4), atol=1e-5)  # orthonormal axes
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert np.allclose(np.diag(whitened_cov(w, x)), eig[:4], rtol=1e-3)  # the 4 largest, largest first


@pytest.mark.parametrize(("power", "shrink"), [(0.5, 0.1), (1.0, 0.3), (0.5, 0.0)])
def test_each_axis_is_scaled_by_its_shrunk_eigenvalue_to_the_power(power, shrink):
    x = data()
    w = fit_whitening(x, dims=6, power=power, shrink=shrink)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    expected = eig * (eig + shrink * eig.mean()) ** (-power)
    assert np.allclose(np.diag(whitened_cov(w, x)), expected, rtol=1e-3)


@pytest.mark.parametrize(("n", "d", "dims", "kept"), [(400, 6, 512, 6), (400, 6, 3, 3), (5, 6, 512, 4),
                                                      (2, 6, 512, 1), (400, 6, 0, 1)])
def test_kept_dimensions_never_exceed_the_data(n, d, dims, kept):
    w = fit_whitening(data(n, d), dims=dims)
    assert w.projection.shape == (d, kept) and np.isfinite(w.projection).all()


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_vectors_are_refused(n):
    with pytest.raises(ValueError, match=f"^whitening needs at least 2 vectors, got {n}$"):
        fit_whitening(data(n))


def test_a_rank_deficient_catalog_stays_finite():
    x = data(3, 6)  # 3 vectors in 6 dimensions: most eigenvalues are 0 (or a hair below)
    w = fit_whitening(x, dims=6, shrink=0.1)
    assert np.isfinite(w.projection).all() and np.isfinite(w.apply(x)).all()


def test_apply_returns_unit_float32_rows_or_one_vector():
    x = data()
    w = fit_whitening(x, dims=4)
    rows = w.apply(x[:5])
    assert rows.shape == (5, 4) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    one = w.apply(x[0])
    assert one.shape == (4,) and one.dtype == np.float32 and np.allclose(one, rows[0], atol=1e-6)
    assert np.array_equal(w.apply(w.mean), np.zeros(4, np.float32))  # the centre maps to 0, not NaN


def test_bytes_round_trip():
    w = fit_whitening(data(), dims=4)
    back = Whitening.from_bytes(w.to_bytes())
    assert np.array_equal(back.mean, w.mean) and np.array_equal(back.projection, w.projection)
    assert back.mean.dtype == np.float32 and back.projection.dtype == np.float32


@pytest.mark.parametrize("n", [7, 8, 9, 20])  # blocks of 8: one short, exactly one, one over, several
def test_the_covariance_summed_in_blocks_is_numpy_s(n):
    from ranking.whitening import _mean_and_covariance

    x = data(n, 6, seed=n)
    mean, cov = _mean_and_covariance(x, block=8)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
