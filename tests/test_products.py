"""ProductTable (catalog/products.py): products read by row from the JSON-lines file, ids found by hash."""

from __future__ import annotations

import json

import numpy as np
import pytest

import catalog.products as products_module
from catalog.products import ProductTable


def table(rows, trailing_newline=True, blank_lines=False) -> ProductTable:
    lines = [json.dumps(r) for r in rows]
    if blank_lines:
        lines = [""] + [x for line in lines for x in (line, "")]
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    return ProductTable(text.encode())


ROWS = [{"id": "a", "category": "Shoes"}, {"id": "b", "category": ""}, {"id": 7, "name": "Ünïcode ✓"}]


@pytest.mark.parametrize("trailing_newline", [True, False])
@pytest.mark.parametrize("blank_lines", [True, False])
def test_rows_read_back_whatever_the_line_endings(trailing_newline, blank_lines):
    t = table(ROWS, trailing_newline, blank_lines)
    assert len(t) == 3 and list(t) == ROWS and t[-1] == ROWS[-1]
    assert t.scan(hashed=("id",), listed="category")[0] == ["Shoes", "", ""] and t.row_of("b") == 1


def test_row_index_limits_on_both_sides():
    t = table(ROWS)
    assert t[2] == ROWS[2] and t[-3] == ROWS[0]
    for outside in (3, -4):
        with pytest.raises(IndexError):
            t[outside]


def test_row_of_finds_ids_as_strings_and_the_first_duplicate():
    t = table(ROWS + [{"id": "a", "category": "later duplicate"}])
    assert t.row_of("a") == 0 and t.row_of("7") == 2 and t.row_of("b") == 1
    assert t.row_of("missing") is None and t.row_of("") is None


def test_a_hash_collision_is_settled_by_the_id(monkeypatch):
    monkeypatch.setattr(products_module, "_id_hash", lambda product_id: 42)  # every id collides
    t = table(ROWS)
    assert [t.row_of(i) for i in ("a", "b", "7", "zzz")] == [0, 1, 2, None]


def test_empty_file_and_memory_mapped_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert len(ProductTable.open(empty)) == 0 and ProductTable.open(empty).row_of("a") is None
    path = tmp_path / "products.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert list(ProductTable.open(path)) == ROWS


def test_scan_reads_a_numeric_column_and_leaves_the_rest_unknown():
    t = table([{"id": "a", "price": 0}, {"id": "b", "price": 12.5}, {"id": "c", "price": None}, {"id": "d"},
               {"id": "e", "price": "9"}, {"id": "f", "price": True}])
    _, prices = t.scan(hashed=(), listed="category", numeric="price")
    assert prices[:2].tolist() == [0.0, 12.5] and np.isnan(prices[2:]).all()
    assert np.isnan(t.scan(hashed=(), listed="category")[1]).all()


@pytest.mark.parametrize("scanned", [False, True])  # hashes made by the load's scan, or on first lookup
def test_a_missing_column_reads_as_empty_text(scanned):
    t = table([{"id": "a"}, {"id": "b", "sku": ""}, {"id": "c", "sku": "None"}, {"id": "d", "sku": "XXXX"}])
    if scanned:
        t.scan(hashed=("sku",), listed="id")
    assert t.first_row("sku", "") == 0  # no sku at all is the same as an empty one
    assert (t.first_row("sku", "None"), t.first_row("sku", "XXXX")) == (2, 3)


@pytest.mark.parametrize("scanned", [False, True])
def test_among_many_duplicates_the_first_row_wins(scanned):
    t = table([{"id": "b" if n % 2 else "a"} for n in range(300)])  # 150 of each, interleaved
    if scanned:
        t.scan(hashed=("id",), listed="id")
    assert (t.row_of("a"), t.row_of("b")) == (0, 1)


def test_an_empty_table_and_the_row_a_refusal_names():
    assert len(ProductTable(b"")) == 0 and list(ProductTable(b"")) == []
    with pytest.raises(IndexError, match="^3$"):
        table(ROWS)[3]


def test_a_released_table_reads_the_same_rows_again(tmp_path):
    """``release`` hands the mapped pages back (the build does so before the graph); the rows are read again."""
    path = tmp_path / "products.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "name": f"p{i}"}) + "\n" for i in range(50)))
    table = ProductTable.open(path)
    before = list(table)
    table.release()
    assert list(table) == before and table.row_of("37") == 37
    ProductTable(b'{"id": "1"}\n').release()  # a table over bytes has nothing to hand back
