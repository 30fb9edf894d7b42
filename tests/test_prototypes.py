"""ranking/prototypes.py: the catalog's prototypes, fitted, stored and read back (the store is untrusted)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ranking.prototypes import PrototypeSettings, fit_prototypes, from_bytes, to_bytes


def clusters(seed: int = 0) -> np.ndarray:
    """40 rows near each of three orthogonal directions of an 8-d space."""
    rng = np.random.default_rng(seed)
    return np.vstack([np.eye(8)[axis] + rng.normal(0, 0.05, (40, 8)) for axis in (0, 3, 6)]).astype(np.float32)


def test_prototypes_are_unit_centres_of_the_catalogs_clusters():
    centres = fit_prototypes(clusters(), PrototypeSettings(count=3))
    assert centres.shape == (3, 8) and centres.dtype == np.float32
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    best = np.abs(centres @ np.eye(8)[[0, 3, 6]].T).max(axis=0)  # each direction has a centre on it
    assert (best > 0.99).all(), best
    unit = clusters() / np.linalg.norm(clusters(), axis=1, keepdims=True)
    nearest = np.argmax(unit @ centres.T, axis=1)  # converged: each centre is the middle of the rows it wins
    for k, centre in enumerate(centres):
        middle = unit[nearest == k].sum(axis=0)
        assert np.allclose(centre, middle / np.linalg.norm(middle), atol=1e-5)


def test_each_iteration_brings_the_centres_closer_to_their_rows():
    """Seeded on rows of the catalog, the centres move to the middle of the rows each one wins: the rows' best
    cosines never fall from one iteration to the next, and rise from the seeds."""
    points = clusters()
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    fits = [(unit @ fit_prototypes(points, PrototypeSettings(count=3, iterations=n)).T).max(axis=1).sum()
            for n in range(4)]
    seeds = fit_prototypes(points, PrototypeSettings(count=3, iterations=0))
    assert all(any(np.allclose(seed, row, atol=1e-6) for row in unit) for seed in seeds)
    assert fits[1] > fits[0] and all(b >= a - 1e-4 for a, b in zip(fits, fits[1:], strict=False))


@pytest.mark.parametrize("rows, count, expected", [(5, 256, 5), (5, 5, 5), (5, 4, 4), (1, 256, 1)])
def test_there_are_as_many_prototypes_as_asked_or_as_rows(rows, count, expected):
    vectors = np.random.default_rng(1).normal(size=(rows, 6)).astype(np.float32)
    assert fit_prototypes(vectors, PrototypeSettings(count=count)).shape == (expected, 6)


def test_the_seeds_are_distinct_rows_and_the_centres_float32_whatever_the_input():
    """With as many centres as rows, each row seeds one (drawn without replacement); float64 in, float32 out."""
    vectors = np.random.default_rng(3).normal(size=(50, 6))
    seeds = fit_prototypes(vectors, PrototypeSettings(count=50, iterations=0))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert seeds.dtype == np.float32 and np.allclose(seeds, unit, atol=1e-6)  # every row once, in row order
    assert fit_prototypes(vectors, PrototypeSettings(count=7)).dtype == np.float32


def test_the_fit_is_seeded():
    vectors = np.random.default_rng(2).normal(size=(200, 6)).astype(np.float32)
    settings = PrototypeSettings(count=10)
    assert np.array_equal(fit_prototypes(vectors, settings), fit_prototypes(vectors, settings))
    assert not np.array_equal(fit_prototypes(vectors, settings), fit_prototypes(vectors, PrototypeSettings(10, seed=1)))


def test_a_centre_that_wins_no_row_keeps_its_place_and_nothing_is_nan():
    """Two identical rows seed two centres; every row goes to the first of them, the second stays as it was."""
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    centres = fit_prototypes(np.stack([a, a, b]), PrototypeSettings(count=3))
    assert np.isfinite(centres).all() and sorted(map(tuple, centres)) == sorted([tuple(a), tuple(a), tuple(b)])


def test_no_vectors_have_no_prototypes():
    with pytest.raises(ValueError, match="^no vectors to fit prototypes on$"):
        fit_prototypes(np.zeros((0, 4), np.float32))


def test_stored_prototypes_read_back_as_they_were():
    centres = fit_prototypes(clusters(), PrototypeSettings(count=3))
    assert np.array_equal(from_bytes(to_bytes(centres), 8), centres)
    assert from_bytes(to_bytes(centres.astype(np.float64)), 8).dtype == np.float32  # stored as float32 always


def test_pickled_prototypes_are_never_unpickled():
    """An npz of Python objects would run code from the store when loaded: refused, and never loaded."""
    from tests.pickled import Payload

    evil = np.empty(2, dtype=object)
    evil[:] = [Payload(), Payload()]
    buf = io.BytesIO()
    np.savez(buf, prototypes=evil)
    Payload.ran = 0
    with pytest.raises(ValueError, match="unreadable prototypes file"):
        from_bytes(buf.getvalue(), 8)
    assert Payload.ran == 0


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD = np.eye(3, 8, dtype=np.float32)


@pytest.mark.parametrize("data, said", [
    (b"not a file a build writes", "unreadable"),
    (_npz(other=GOOD), "unreadable"),  # no prototypes in it
    (_npz(prototypes=GOOD.astype(np.float64)), "malformed"),
    (_npz(prototypes=GOOD[:, :7]), "malformed"),  # rows of another model
    (_npz(prototypes=GOOD[0]), "malformed"),  # one vector, not rows
    (_npz(prototypes=GOOD[:0]), "malformed"),  # none
    (_npz(prototypes=np.where(GOOD == 1, np.nan, GOOD).astype(np.float32)), "malformed"),
    (_npz(prototypes=np.where(GOOD == 1, np.inf, GOOD).astype(np.float32)), "malformed"),
])
def test_a_prototypes_file_that_is_not_what_a_build_writes_is_refused(data, said):
    with pytest.raises(ValueError, match=said):
        from_bytes(data, 8)
    assert from_bytes(_npz(prototypes=GOOD), 8).shape == (3, 8)  # the same file, well made, is read


def all_rounds(vectors: np.ndarray, settings: PrototypeSettings) -> np.ndarray:
    """The fit without its early stop: every one of ``settings.iterations`` rounds, written out here."""
    points = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(settings.seed)
    centres = points[np.sort(rng.choice(len(points), min(settings.count, len(points)), replace=False))].copy()
    for _ in range(settings.iterations):
        nearest = np.argmax(points @ centres.T, axis=1)
        order = np.argsort(nearest, kind="stable")
        won, starts = np.unique(nearest[order], return_index=True)
        merged = np.add.reduceat(points[order], starts, axis=0)
        centres[won] = merged / np.maximum(np.linalg.norm(merged, axis=1, keepdims=True), 1e-12)
    return centres


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stopping_once_no_row_changes_centre_gives_what_every_round_gives(seed):
    """Rows of overlapping clusters, so that the fit takes several rounds to settle and then stops early."""
    rng = np.random.default_rng(seed)
    vectors = (rng.normal(size=(6, 16))[rng.integers(0, 6, 300)] + rng.normal(0, 0.8, (300, 16))).astype(np.float32)
    settings = PrototypeSettings(count=12, iterations=40)
    assert np.allclose(fit_prototypes(vectors, settings), all_rounds(vectors, settings), atol=1e-6)


def test_the_fit_stops_at_the_first_round_that_changes_no_rows_centre(monkeypatch):
    import ranking.prototypes as prototypes

    seen: list[np.ndarray] = []

    def counted(points, centres):
        seen.append(np.argmax(points @ centres.T, axis=1))
        return seen[-1]

    monkeypatch.setattr(prototypes, "nearest_centres", counted)
    fit_prototypes(clusters(), PrototypeSettings(count=3, iterations=15))
    assert 2 <= len(seen) < 15  # well-separated clusters settle at once
    assert np.array_equal(seen[-1], seen[-2])
    assert not any(np.array_equal(a, b) for a, b in zip(seen[:-2], seen[1:-1], strict=True))
