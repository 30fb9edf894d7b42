"""The loaded catalog index: vectors, products, lookups by id and category."""

from __future__ import annotations

import numpy as np

from catalog.store import IndexData, open_store, read_current
from gateway.search import ExactSearch


class CatalogIndex:
    """One immutable index version, ready to search."""

    def __init__(self, data: IndexData) -> None:
        self.data = data
        self.products = data.products
        self.backbone: str = data.backbone
        self.version: str = data.version
        self.row_of = {str(p["id"]): i for i, p in enumerate(self.products)}
        cats = np.array([str(p.get("category", "")).casefold() for p in self.products])
        self._cats = cats
        self.categories = sorted({str(p.get("category", "")) for p in self.products} - {""})
        self.engine = ExactSearch(data.embeddings)

    @classmethod
    def load(cls, uri: str) -> CatalogIndex:
        return cls(read_current(open_store(uri)))

    def __len__(self) -> int:
        return len(self.products)

    def vector(self, row: int) -> np.ndarray:
        return self.engine.matrix[row]

    def category_mask(self, category: str | None) -> np.ndarray | None:
        if not category:
            return None
        return self._cats == category.strip().casefold()
