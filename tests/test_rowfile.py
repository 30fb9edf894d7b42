"""Matrices read and written a block of rows at a time (safeio/rowfile.py): the same rows as the array, at every
block boundary, and a file that is not a whole float32 matrix refused."""

from __future__ import annotations

import numpy as np
import pytest

from safeio.rowfile import RowFile, RowFileError, RowWriter, blocks, take


def matrix(n: int, d: int = 5) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, d), dtype=np.float32)


def written(path, x: np.ndarray, block: int = 3) -> RowFile:
    writer = RowWriter(path, *x.shape)
    for start in range(0, len(x), block):
        writer.append(x[start:start + block])
    return writer.close()


@pytest.mark.parametrize("n", [0, 1, 6, 7, 8])
def test_a_file_written_in_blocks_is_the_array_np_load_reads(tmp_path, n):
    x = matrix(n)
    rows = written(tmp_path / "m.npy", x)
    assert rows.shape == (n, 5) and len(rows) == n
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), x)
    np.testing.assert_array_equal(rows[2:5], x[2:5])
    np.testing.assert_array_equal(rows[:], x)


@pytest.mark.parametrize("n", [6, 7, 8])  # the last block full, one row over, one row short (size 7)
def test_blocks_of_a_file_and_of_the_array_are_the_same_rows(tmp_path, n):
    x = matrix(n)
    rows = written(tmp_path / "m.npy", x)
    from_file, from_array = list(blocks(rows, 7)), list(blocks(x, 7))
    assert [s for s, _ in from_file] == [s for s, _ in from_array] == list(range(0, n, 7))
    for (_, a), (_, b) in zip(from_file, from_array, strict=True):
        np.testing.assert_array_equal(a, b)


def test_take_reads_the_rows_asked_for_across_blocks(tmp_path):
    x = matrix(20)
    rows = written(tmp_path / "m.npy", x)
    wanted = np.array([0, 6, 7, 13, 14, 19])  # both sides of each boundary of blocks of 7
    np.testing.assert_array_equal(take(rows, wanted, block=7), x[wanted])
    np.testing.assert_array_equal(take(x, wanted), x[wanted])
    with pytest.raises(IndexError):
        take(rows, np.array([3, 20]), block=7)


def test_the_writer_refuses_a_row_too_many_and_close_refuses_one_too_few(tmp_path):
    writer = RowWriter(tmp_path / "m.npy", 4, 5)
    writer.append(matrix(4))
    with pytest.raises(ValueError, match="more than 4 rows"):
        writer.append(matrix(1))
    short = RowWriter(tmp_path / "s.npy", 4, 5)
    short.append(matrix(3))
    with pytest.raises(ValueError, match="3 of 4 rows"):
        short.close()


def test_a_slice_with_a_step_is_refused(tmp_path):
    with pytest.raises(IndexError):
        written(tmp_path / "m.npy", matrix(4))[::2]


@pytest.mark.parametrize("bad", ["float64", "3-d", "fortran", "truncated", "longer", "not npy", "empty"])
def test_a_file_that_is_not_a_whole_float32_matrix_is_refused(tmp_path, bad):
    path = tmp_path / "m.npy"
    x = matrix(4)
    if bad == "float64":
        np.save(path, x.astype(np.float64))
    elif bad == "3-d":
        np.save(path, x.reshape(2, 2, 5))
    elif bad == "fortran":
        np.save(path, np.asfortranarray(x))
    elif bad in ("truncated", "longer"):
        np.save(path, x)
        data = path.read_bytes()
        path.write_bytes(data[:-1] if bad == "truncated" else data + b"\0")
    else:
        path.write_bytes(b"" if bad == "empty" else b"PK\x03\x04 not a matrix")
    with pytest.raises(RowFileError):
        RowFile(path)
    np.save(path, x)  # the same file, whole, is read
    assert RowFile(path).shape == (4, 5)


def test_rows_come_back_float32_whatever_was_given(tmp_path):
    x = matrix(9).astype(np.float64)
    writer = RowWriter(tmp_path / "m.npy", 9, 5)
    writer.append(x)  # float64 in: float32 on disk, the same values
    rows = writer.close()
    assert isinstance(rows, RowFile) and rows.path == tmp_path / "m.npy" and rows.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), x.astype(np.float32))
    assert {block.dtype for _, block in blocks(x, 4)} == {np.dtype(np.float32)}
    assert take(x, [1, 2]).dtype == np.float32 and take(rows, np.array([1, 2])).dtype == np.float32


def test_an_empty_slice_reads_no_rows(tmp_path):
    rows = written(tmp_path / "m.npy", matrix(6))
    assert rows[3:3].shape == (0, 5) and rows[5:2].shape == (0, 5) and rows[6:9].shape == (0, 5)


def test_a_writer_left_by_an_error_closes_its_file(tmp_path):
    with pytest.raises(RuntimeError), RowWriter(tmp_path / "m.npy", 4, 5) as writer:
        raise RuntimeError("the build died")
    assert writer._fh.closed


def test_each_refusal_says_what_is_wrong(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, matrix(4).reshape(2, 2, 5))
    with pytest.raises(RowFileError, match=r"^m\.npy: a 3-d float32 array, not a float32 matrix$"):
        RowFile(path)
    np.save(path, matrix(4))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RowFileError, match=r"^m\.npy: 207 bytes, not 4 × 5 float32$"):
        RowFile(path)
    path.write_bytes(b"\x93NUMPY\x09\x00junk")
    with pytest.raises(RowFileError, match=r"^m\.npy: not a \.npy file \(an unknown \.npy version\)$"):
        RowFile(path)
    rows = written(path, matrix(20))
    with pytest.raises(IndexError, match="^a RowFile reads contiguous rows only$"):
        rows[::2]
    with pytest.raises(IndexError, match=r"^rows out of range 0\.\.19$"):
        take(rows, np.array([3, 20]))
