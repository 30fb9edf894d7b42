"""Products are buyable: a card's image and title link to the product's page in the shop (``product_url``),
only when it is a safe http(s) link, checked again by the gateway because the index store is untrusted."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gateway import create_app
from gateway.config import Config
from indexstore.store import IndexData, open_store, write_and_publish
from tests.conftest import jpeg_bytes


class FixedClient:
    backbone = "fixed-2d"

    def embed(self, blob: bytes):
        return np.array([1, 0], np.float32), self.backbone

    def probe(self) -> str:
        return self.backbone


@pytest.fixture
def web(tmp_path):
    rows = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2]], np.float32)
    products = [{"id": "1", "name": "Linked bag", "category": "Bags", "price": 20.0,
                 "image_url": "https://img.example/1.jpg", "product_url": "https://shop.example/p/1"},
                {"id": "2", "name": "Unlinked bag", "category": "Bags", "image_url": "https://img.example/2.jpg"},
                {"id": "3", "name": "Tampered bag", "category": "Bags", "image_url": "https://img.example/3.jpg",
                 "product_url": "javascript:alert(document.cookie)"}]  # a store someone wrote to
    write_and_publish(open_store(tmp_path / "index"), IndexData(rows, products, {"backbone": FixedClient.backbone}))
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    locate_item=False)
    return create_app(config, client=FixedClient()).test_client()


def test_the_api_names_each_products_page_only_when_it_is_a_safe_link(web):
    body = web.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0"}).get_json()
    links = {r["id"]: r["product_url"] for r in body["results"]}
    assert links == {"1": "https://shop.example/p/1", "2": None, "3": None}
    assert next(r for r in body["results"] if r["id"] == "1")["price"] == 20.0


def test_a_cards_image_and_title_link_to_the_shop_and_nothing_else_does(web):
    html = web.post("/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0"}).get_data(
        as_text=True)
    assert html.count('href="https://shop.example/p/1"') == 2  # the image and the title
    assert '<h3><a href="https://shop.example/p/1">Linked bag</a></h3>' in html
    assert "<h3>Unlinked bag</h3>" in html and "<h3>Tampered bag</h3>" in html
    assert "javascript:" not in html
