"""Catalog CSV parsing (catalog/reader.py): hand-edited files, hostile cells, property-based fuzzing."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.build import errors_csv
from catalog.reader import CatalogError, RowError, read_catalog

HEADER = b"id,name,category,price,image_url\n"


def catalog(tmp_path, body: bytes, header: bytes = HEADER):
    path = tmp_path / "products.csv"
    path.write_bytes(header + body)
    return path


def test_bom_multiline_and_physical_line_numbers(tmp_path):
    body = (b'1,ok,c,,a.jpg\n2,caf\xe9,c,,b.jpg\n3,x,c,,c.jpg,extra,more\n4,"multi\nline",c,1,d.jpg\n'
            b"5," + b"x" * 20000 + b",c,,e.jpg\n6,y,c,-3,f.jpg\n7,z,c,abc,g.jpg\n")
    path = catalog(tmp_path, body, header=b"\xef\xbb\xbf" + HEADER)
    rows, errors = read_catalog(path)
    assert [r["id"] for r in rows] == ["1", "4"]
    assert rows[1]["name"] == "multi\nline" and rows[1]["line"] == 5
    found = {(e.line, e.id): e.error for e in errors}
    assert found == {
        (3, "2"): "not valid UTF-8 text",
        (4, "3"): "malformed row: 7 fields, the header has 5",
        (7, "5"): "a field is longer than 10000 characters",
        (8, "6"): "price must be a non-negative number, got '-3'",
        (9, "7"): "price must be a number, got 'abc'",
    }


@pytest.mark.parametrize("body, message", [
    (b"", "not a readable CSV"),
    (b"\x00\x01\x02", "missing required column"),
])
def test_unusable_files(tmp_path, body, message):
    with pytest.raises(CatalogError, match=message):
        read_catalog(catalog(tmp_path, body, header=b""))


def test_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="catalog not found"):
        read_catalog(tmp_path / "none.csv")


def test_formula_cells_are_kept_but_reported(tmp_path):
    path = catalog(tmp_path, b'1,=HYPERLINK("http://x"),c,,a.jpg\n2,-20% off shirt,c,,b.jpg\n3,@SUM(A1),+cmd,,c.jpg\n')
    rows, errors = read_catalog(path)
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert [(e.id, e.stage) for e in errors] == [("1", "warning"), ("3", "warning")]
    assert "name" in errors[0].error and "name, category" in errors[1].error


def test_formula_cells_are_inert_in_the_error_report():
    report = errors_csv([RowError(2, "=cmd|' /C calc'!A0", "@SUM(1)", "catalog", "duplicate id")])
    row = next(csv.DictReader(io.StringIO(report.decode())))
    assert row["id"].startswith("'=") and row["image_url"].startswith("'@")


cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(cell, cell, cell, cell, cell), max_size=12))
def test_any_rows_are_kept_or_reported_never_raise(tmp_path, records):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "name", "category", "price", "image_url"])
    writer.writerows(records)
    path = tmp_path / "fuzz.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    rows, errors = read_catalog(path)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))  # ids are unique after parsing
    assert all(r["id"] and r["image_url"] for r in rows)
    assert all(r["price"] is None or r["price"] >= 0 for r in rows)
    left_out = [e for e in errors if e.stage != "warning"]
    assert len(rows) + len(left_out) <= len(records)  # blank records may vanish, nothing is invented
    assert {e.id for e in errors if e.stage == "warning"} <= set(ids)  # warnings are about kept rows
