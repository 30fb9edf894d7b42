"""gateway/routes/ in fast unit tests: the real Flask app and service over a small index on local files, with a
stand-in model client (a fixed vector per photo), so every route, parameter check, answer field and error page
runs in milliseconds and the routes join the forked mutation run. The same routes with the real model:
tests/test_gateway.py, tests/test_hostile_inputs.py; through a real browser: tests/test_browser.py."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import replace

import numpy as np
import pytest
from flask import template_rendered

from catalog.build import Merged, finish_version
from gateway import create_app
from gateway.config import Config
from gateway.errors import Busy, NotFound, ServiceError, Unavailable
from gateway.routes import SEARCH_DOWN
from gateway.routes.common import CONTENT_SECURITY_POLICY, MAX_JSON_BYTES, MAX_PRICE
from gateway.routes.errors import IMAGE_WORDS, URL_WORDS
from indexstore.store import open_store, write_and_publish
from modelio.imaging import ImageError
from modelserver.client import ModelServerError
from safeio.safe_http import UnsafeURL
from search.base import SearchUnavailable
from tests.conftest import ADMIN, jpeg_bytes

MODEL = "fixed-8d"
CATEGORIES = ["Shoes", "Bags", "Watches"]
#: Products in the test catalog: enough labelled ones (50) for the build to calibrate the percent.
N = 60


class Model:
    """The model server's stand-in: product ``row``'s own vector for every photo (or a failure when asked)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.row, self.calls, self.fail = x, 0, 0, None

    def embed(self, blob: bytes):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.x[self.row], MODEL

    def probe(self) -> str:
        return self.embed(b"")[1]


def products(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"id": str(100 + i), "name": f"item {i}", "category": CATEGORIES[i % 3], "price": float(i * 10),
               "image_url": f"images/{i}.jpg", "product_url": f"https://shop.test/p/{i}",
               "base_colour": ["Red", "Blue", "Green", "Black"][i % 4]}  # colours: the build fits a projection
        if i == 1:
            row |= {"image_url": "https://cdn.test/1.jpg", "product_url": "javascript:alert(1)", "price": None}
        rows.append(row)
    return rows


@pytest.fixture
def shop(tmp_path):
    """A published version of N products (calibration, no-match rule, colours: what a build writes) and the folder
    of its local images."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 8))
    x = centres[np.arange(N) % 3] + rng.normal(scale=0.6, size=(N, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rows = products(N)
    (tmp_path / "shop" / "images").mkdir(parents=True)
    for i in range(N):
        (tmp_path / "shop" / "images" / f"{i}.jpg").write_bytes(jpeg_bytes((4 * i, 90, 200 - 3 * i)))
    (tmp_path / "work").mkdir()
    index, extra = finish_version(Merged.of(rows, x), tmp_path / "shop" / "products.csv", MODEL, N, tmp_path / "work")
    write_and_publish(open_store(tmp_path / "index"), index, extra)
    return tmp_path, x


def config_for(tmp_path, **changes) -> Config:
    return replace(Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                          catalog_dir=str(tmp_path / "shop"), max_upload_mb=1, ready_cache_s=0), **changes)


@pytest.fixture
def app(shop):
    tmp_path, x = shop
    app = create_app(config_for(tmp_path), client=Model(x))
    app.testing = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def svc(app):
    return app.extensions["photo"]


@pytest.fixture
def rendered(app):
    """The context of every page rendered while the test runs."""
    pages: list[dict] = []

    def record(sender, template, context, **extra):
        pages.append(context)

    with template_rendered.connected_to(record, app):
        yield pages


def photo(client, path: str = "/api/search", **fields):
    return client.post(path, data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), **fields})


# --------------------------------------------------------------------------- the JSON API's answer


def test_a_result_carries_every_field_of_its_product(client, svc):
    found = photo(client, threshold="0", top_k=str(N)).get_json()
    by_id = {r["id"]: r for r in found["results"]}
    assert by_id["100"] | {"score": 0, "similarity": 0, "match": 0} == {
        "id": "100", "name": "item 0", "category": "Shoes", "price": 0.0, "image_url": "/catalog/images/0.jpg",
        "product_url": "https://shop.test/p/0", "score": 0, "similarity": 0, "match": 0}
    assert by_id["101"]["image_url"] == "https://cdn.test/1.jpg"  # a remote image is linked as it is
    assert by_id["101"]["product_url"] is None and by_id["101"]["price"] is None  # an unsafe link is dropped
    first = found["results"][0]
    assert first["id"] == "100" and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert first["score"] == round(first["score"], 6) and first["similarity"] == round(first["similarity"], 1)
    assert first["match"] == round(first["match"], 1)


def test_the_answer_says_how_it_was_ranked_and_by_which_version(client, svc):
    found = photo(client, threshold="0", top_k="5").get_json()
    index = svc.require_index()
    assert found["model"] == MODEL and found["index_version"] == index.version
    guess = found["category_first"]
    assert set(guess) == {"category", "confidence", "source", "results"} and guess["category"] == "Shoes"
    assert guess["results"] == sum(r["category"] == "Shoes" for r in found["results"][:guess["results"]])
    assert found["box"] is None and found["items"] == [{"box": [0.0, 0.0, 1.0, 1.0], "category": "Shoes"}]
    assert found["no_close_match"] is False and found["closer_outside_filter"] is False
    assert isinstance(found["took_ms"], float) and found["took_ms"] >= 0 and found["query_token"]
    plain = photo(client, threshold="0", top_k="5", category_first="false").get_json()
    assert plain["category_first"] is None


def test_a_crop_is_answered_with_its_box_rounded(client):
    found = photo(client, crop="0.123456,0.2,0.9,0.95").get_json()
    assert found["box"] == [0.1235, 0.2, 0.9, 0.95] and found["items"][0]["box"] == [0.1235, 0.2, 0.9, 0.95]


def test_more_like_this_has_no_token_and_leaves_the_product_out(client):
    found = client.get(f"/api/products/100/similar?threshold=0&top_k={N - 1}").get_json()
    assert "query_token" not in found and "100" not in [r["id"] for r in found["results"]]
    assert len(found["results"]) == N - 1
    missing = client.get("/api/products/nope/similar")
    assert missing.status_code == 404 and missing.get_json() == {
        "error": "no product with id 'nope' in the catalog", "status": 404}


def test_the_api_description_is_served(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.get_json()["openapi"].startswith("3.")


# --------------------------------------------------------------------------- a request's parameters


@pytest.mark.parametrize(("fields", "message"), [
    ({"threshold": "x"}, "threshold must be a number between 0 and 100, got 'x'"),
    ({"threshold": "100.5"}, "threshold must be between 0 and 100, got 100.5"),
    ({"threshold": "-0.1"}, "threshold must be between 0 and 100, got -0.1"),
    ({"top_k": "0"}, "top_k must be between 1 and 100, got 0"),
    ({"top_k": "101"}, "top_k must be between 1 and 100, got 101"),
    ({"top_k": "2.5"}, "top_k must be a whole number between 1 and 100, got '2.5'"),
    ({"offset": "-1"}, "offset must be between 0 and 100, got -1"),
    ({"category_first": "maybe"}, "category_first must be true or false, got 'maybe'"),
    ({"min_price": "5", "max_price": "2"}, "the lowest price (5) is above the highest (2): swap them"),
    ({"max_price": "2e12"}, "max_price must be between 0 and 1e+12, got 2e+12"),
    ({"item": "4"}, "item must be between 0 and 3, got 4"),
])
def test_a_setting_out_of_its_range_is_refused_in_words(client, fields, message):
    answer = photo(client, **fields)
    assert answer.status_code == 400 and answer.get_json() == {"error": message, "status": 400}


@pytest.mark.parametrize(("fields", "top_k", "threshold"), [
    ({"top_k": "1", "threshold": "0"}, 1, 0.0), ({"top_k": "100", "threshold": "100"}, 100, 100.0),
    ({"top_k": " ", "threshold": ""}, 12, 70.0),
])
def test_settings_at_their_limits_and_blank_ones_taking_the_default(client, svc, monkeypatch, fields, top_k,
                                                                    threshold):
    seen = []
    real = svc.search
    monkeypatch.setattr(svc, "search", lambda query, options: (seen.append(options), real(query, options))[1])
    assert photo(client, **fields).status_code == 200
    assert (seen[0].top_k, seen[0].threshold) == (top_k, threshold)
    assert MAX_PRICE == 1e12


def test_a_whole_number_in_json_may_be_written_as_a_float(client, svc, monkeypatch):
    seen = []
    real = svc.search
    monkeypatch.setattr(svc, "search", lambda query, options: (seen.append(options), real(query, options))[1])
    client.post("/api/search", json={"image_url": "https://x.test/a.jpg", "top_k": 3.0, "threshold": 0.5})
    assert (seen[0].top_k, seen[0].threshold) == (3, 0.5)


@pytest.mark.parametrize(("body", "message"), [
    ({"threshold": True}, "threshold must be a number between 0 and 100, got True"),
    ({"top_k": 2.5}, "top_k must be a whole number between 1 and 100, got 2.5"),
    ({"category_first": "sometimes"}, "category_first must be true or false, got 'sometimes'"),
])
def test_json_settings_are_numbers_and_flags_not_look_alikes(client, body, message):
    answer = client.post("/api/search", json={"image_url": "https://x.test/a.jpg", **body})
    assert answer.get_json() == {"error": message, "status": 400}


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("YES", True), (" on ", True), ("1", True), ("false", False), ("No", False), ("0", False),
    ("off", False), (True, True), (False, False), ("", True), (None, True)])
def test_category_first_in_every_spelling(client, svc, monkeypatch, value, expected):
    seen = []
    monkeypatch.setattr(svc, "search", lambda query, options: seen.append(options) or (_ for _ in ()).throw(
        NotFound("stop here")))
    body = {"image_url": "https://x.test/a.jpg"} | ({} if value is None else {"category_first": value})
    client.post("/api/search", json=body)
    assert seen[0].category_first is expected


def test_options_as_the_service_receives_them(client, svc, monkeypatch):
    seen = []
    monkeypatch.setattr(svc, "search", lambda query, options: seen.append((query, options)) or (
        _ for _ in ()).throw(NotFound("stop here")))
    client.post("/api/search?threshold=33", data={"image_url": "  https://x.test/a.jpg ", "category": " Bags ",
                                                  "offset": "4", "min_price": "1.5", "query_token": "t",
                                                  "query_picture": "p", "item": "2",
                                                  "file": (io.BytesIO(b"ignored"), "")})
    query, options = seen[0]
    assert (options.threshold, options.category, options.offset, options.min_price, options.max_price) == (
        33.0, "Bags", 4, 1.5, None)
    assert type(options.offset) is int and type(options.top_k) is int  # row counts, never 4.0
    assert (query.upload, query.image_url, query.token, query.picture, query.item, query.with_picture) == (
        None, "https://x.test/a.jpg", "t", "p", 2, False)
    client.post("/api/search", json={"image_url": "https://x.test/a.jpg", "category": "  ", "threshold": None})
    assert seen[1][1].category is None and seen[1][1].threshold == 70.0  # a JSON null is left out
    client.post("/api/search", data={"file": (io.BytesIO(b"bytes"), "a.jpg")})
    assert seen[2][0].upload == b"bytes" and seen[2][0].image_url == ""


def test_the_form_wins_over_the_query_string_and_json_over_both(client, svc, monkeypatch):
    seen = []
    monkeypatch.setattr(svc, "search", lambda query, options: seen.append(options) or (_ for _ in ()).throw(
        NotFound("stop here")))
    client.post("/api/search?top_k=3&threshold=10", data={"top_k": "4", "image_url": "https://x.test/a.jpg"})
    client.post("/api/search?top_k=3", json={"top_k": 5, "image_url": "https://x.test/a.jpg"})
    assert [o.top_k for o in seen] == [4, 5] and seen[0].threshold == 10.0


NOT_UTF8 = "the request has text that is not valid UTF-8: send it again as plain text"


@pytest.mark.parametrize("send", [
    lambda c: c.post("/api/search?image_url=%FF"),
    lambda c: c.post("/api/search?%FF=1"),
    lambda c: c.post("/api/search", data=b'--B\r\nContent-Disposition: form-data; name="category"\r\n\r\n\xff\r\n'
                     b"--B--\r\n", content_type="multipart/form-data; boundary=B"),
    lambda c: c.post("/api/search", data=b'{"image_url": "\\ud800"}', content_type="application/json"),
])
def test_text_that_is_not_utf8_is_refused_in_words(client, send):
    answer = send(client)
    assert answer.status_code == 400 and answer.get_json()["error"] == NOT_UTF8


def test_a_query_string_of_good_utf8_and_separators_is_read(client):
    answer = client.post("/api/search?category=%C3%A9t%C3%A9;top_k=3&threshold=0+")
    assert answer.get_json()["error"] == "no image: choose or drop a photo, or paste a link to one"


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"[" * 5000])
def test_a_json_body_must_be_an_object(client, body):
    answer = client.post("/api/search", data=body, content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["error"] == (
        'JSON body must be an object, e.g. {"image_url": "https://..."}')


def padded(size: int) -> bytes:
    head = b'{"image_url": "https://x.test/a.jpg", "pad": "'
    return head + b"a" * (size - len(head) - 2) + b'"}'


@pytest.mark.parametrize("chunked", [False, True])
def test_a_json_body_at_its_limit_is_read_and_one_byte_more_is_refused(client, chunked):
    def send(body: bytes):
        if chunked:  # no Content-Length: counted while read
            return client.post("/api/search", input_stream=io.BytesIO(body), content_type="application/json",
                               headers={"Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
        return client.post("/api/search", data=body, content_type="application/json")

    assert len(padded(MAX_JSON_BYTES)) == MAX_JSON_BYTES == 48 * 1024
    at = send(padded(MAX_JSON_BYTES))
    assert at.status_code != 413
    over = send(padded(MAX_JSON_BYTES + 1))
    assert over.status_code == 413 and over.get_json()["error"] == "a JSON request may be at most 48 KB"


# --------------------------------------------------------------------------- headers, health


@pytest.mark.parametrize("path", ["/", "/api/products/nope/similar", "/healthz", "/no-such-page", "/openapi.json"])
def test_every_answer_carries_the_security_headers(client, path):
    headers = client.get(path).headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert (headers["X-Content-Type-Options"], headers["Referrer-Policy"], headers["X-Frame-Options"]) == (
        "nosniff", "no-referrer", "DENY")
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self';" in CONTENT_SECURITY_POLICY


def test_alive_and_ready_say_only_that_in_public(client, svc):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}
    svc.client.fail = ModelServerError("unreachable at http://10.0.0.5:8080")
    down = client.get("/readyz")
    assert down.status_code == 503 and down.get_json() == {"ready": False}


def test_readiness_details_only_on_the_admin_listener(client, svc):
    index = svc.require_index()
    details = client.get("/readyz", environ_overrides=ADMIN)
    assert details.status_code == 200 and details.get_json() == {
        "ready": True, "reason": "ready", "index_version": index.version, "index_cached": False, "index_error": None,
        "model": MODEL, "products": N, "search_backend": "exact"}
    svc.client.fail = ModelServerError("unreachable")
    down = client.get("/readyz", environ_overrides=ADMIN)
    assert down.status_code == 503 and down.get_json()["reason"] == "embedding model not ready: unreachable"


def test_readiness_without_an_index(tmp_path, shop):
    _, x = shop
    app = create_app(config_for(tmp_path, index_uri=str(tmp_path / "nowhere")), client=Model(x))
    body = app.test_client().get("/readyz", environ_overrides=ADMIN).get_json()
    assert body["ready"] is False and (body["index_version"], body["model"], body["products"],
                                       body["search_backend"]) == (None, None, 0, None)
    assert body["index_error"] and body["reason"] == body["index_error"]


# --------------------------------------------------------------------------- the page


def test_the_home_page_offers_the_catalogs_categories_and_its_settings(client, rendered, svc):
    assert client.get("/").status_code == 200
    (page,) = rendered
    index = svc.require_index()
    assert page["categories"] == index.categories and page["calibrated"] == index.calibration_info
    assert page["calibrated"] is not None and page["prices"] is True
    assert (page["threshold"], page["top_k"], page["category_first"], page["refine_open"]) == (70.0, 12, True, False)
    assert (page["min_price"], page["max_price"], page["more"]) == (None, None, 24)
    assert page["max_upload_bytes"] == 1024 * 1024 and page["image_link"] and page["product_page"]


@pytest.mark.parametrize(("fields", "refine_open"), [
    ({}, False), ({"threshold": "60"}, True), ({"category_first": "0"}, True), ({"top_k": "5"}, False)])
def test_the_refine_panel_opens_when_a_setting_is_not_its_default(client, rendered, fields, refine_open):
    photo(client, "/search", **fields)
    assert rendered[-1]["refine_open"] is refine_open
    assert rendered[-1]["category_first"] is (fields.get("category_first") != "0")


@pytest.mark.parametrize(("top_k", "more"), [("12", 24), ("88", 100), ("99", 100), ("100", None)])
def test_show_more_offers_the_next_page_up_to_the_most(client, rendered, top_k, more):
    photo(client, "/search", top_k=top_k)
    assert rendered[-1]["more"] == more


def test_show_more_asks_for_more_and_says_where_the_new_ones_start(client, rendered):
    photo(client, "/search", top_k="12", show="24", threshold="0")
    page = rendered[-1]
    assert (page["first_new"], page["top_k"]) == (12, 24) and len(page["found"].hits) == 24
    photo(client, "/search", show="24", threshold="0")
    assert rendered[-1]["first_new"] is None  # nothing shown before


def test_a_page_without_an_index_still_renders(tmp_path, shop):
    _, x = shop
    app = create_app(config_for(tmp_path, index_uri=str(tmp_path / "nowhere")), client=Model(x))
    pages = []
    with template_rendered.connected_to(lambda s, template, context, **e: pages.append(context), app):
        assert app.test_client().get("/").status_code == 200
    assert (pages[0]["categories"], pages[0]["calibrated"], pages[0]["prices"]) == ([], None, False)


def test_the_page_search_keeps_the_query_and_a_shareable_link(client, rendered):
    answer = photo(client, "/search", threshold="0", category="Bags", category_first="0", min_price="5")
    page = rendered[-1]
    assert answer.status_code == 200 and page["searched"] is True and page["query_token"]
    assert page["query_picture"].startswith("data:image/jpeg;base64,") and page["image_url"] == ""
    assert page["share_url"] == "" and (page["threshold"], page["category"], page["min_price"]) == (0.0, "Bags", 5.0)
    assert {h.product["category"] for h in page["found"].hits} == {"Bags"}


def test_a_get_without_a_query_goes_home_and_a_token_is_a_query(client, rendered):
    assert client.get("/search?threshold=10").headers["Location"] == "/"
    token = photo(client).get_json()["query_token"]
    again = client.get(f"/search?query_token={token}&threshold=0")
    assert again.status_code == 200 and len(rendered[-1]["found"].hits) == 12


def test_a_shared_link_names_only_the_settings_that_differ(app, svc):
    from gateway.routes.page import _link_options
    from gateway.service import SearchOptions

    with app.test_request_context():
        assert _link_options(SearchOptions(70.0, 12)) == {}
        assert _link_options(SearchOptions(40.5, 5, "Bags", False, min_price=1.0, max_price=2.0)) == {
            "threshold": "40.5", "top_k": 5, "category": "Bags", "category_first": 0, "min_price": 1.0,
            "max_price": 2.0}


def test_more_like_this_page_names_its_product_and_a_link_back(client, rendered):
    assert client.get("/products/103/similar?top_k=5&threshold=0").status_code == 200
    page = rendered[-1]
    assert page["anchor"]["id"] == "103" and page["searched"] is True
    assert page["share_url"] == "/products/103/similar?threshold=0&top_k=5"
    assert page["first_new"] is None and "103" not in [h.product["id"] for h in page["found"].hits]


@pytest.mark.parametrize(("path", "status", "kind"), [
    ("images/3.jpg", 200, "image/jpeg"), ("images/3.JPG", 404, None), ("images/99.jpg", 404, None),
    ("products.csv", 404, None), ("../shop/images/3.jpg", 404, None), ("https://cdn.test/1.jpg", 404, None)])
def test_the_catalog_serves_only_its_own_named_images(client, path, status, kind):
    answer = client.get(f"/catalog/{path}")
    assert answer.status_code == status
    if kind:
        assert answer.mimetype == kind and answer.headers["Cache-Control"] == "public, max-age=3600"


def test_a_named_image_gone_from_disk_is_not_found_and_without_a_folder_nothing_is_served(shop, client):
    tmp_path, x = shop
    (tmp_path / "shop" / "images" / "4.jpg").unlink()
    gone = client.get("/catalog/images/4.jpg", headers={"Accept": "application/json"})
    assert gone.status_code == 404 and "image not found" in gone.get_data(as_text=True)
    app = create_app(config_for(tmp_path, catalog_dir=""), client=Model(x))
    assert app.test_client().get("/catalog/images/3.jpg").status_code == 404


def two_product_client(tmp_path, first: dict):
    """A client of a version of two products as stored (the store is untrusted): ``first``, then a plain one."""
    x = np.eye(8, dtype=np.float32)[:2]
    rows = [first, {"id": "2", "name": "b", "category": "A", "image_url": "images/b.jpg"}]
    (tmp_path / "shop" / "images").mkdir(parents=True, exist_ok=True)
    write_and_publish(open_store(tmp_path / "index"), *finish_version(Merged.of(rows, x), tmp_path / "c.csv",
                                                                      MODEL, 2, tmp_path))
    return create_app(config_for(tmp_path), client=Model(x)).test_client()


@pytest.mark.parametrize(("suffix", "kind"), [(".jpeg", "image/jpeg"), (".png", "image/png"),
                                              (".webp", "image/webp"), (".gif", "image/gif")])
def test_each_image_type_is_served_as_itself(tmp_path, suffix, kind):
    client = two_product_client(tmp_path, {"id": "1", "name": "a", "category": "A", "image_url": f"images/a{suffix}"})
    (tmp_path / "shop" / "images" / f"a{suffix}").write_bytes(b"bytes")
    answer = client.get(f"/catalog/images/a{suffix}")
    assert answer.status_code == 200 and answer.mimetype == kind


# --------------------------------------------------------------------------- every failure as an answer


def said(caplog, level: int = logging.INFO) -> list[str]:
    """What the error handlers logged at ``level`` (the access log and other loggers left out)."""
    return [r.getMessage() for r in caplog.records if r.name == "gateway.routes.errors" and r.levelno == level]


def fail_with(svc, monkeypatch, exc: Exception) -> None:
    def search(query, options):
        raise exc

    monkeypatch.setattr(svc, "search", search)


@pytest.mark.parametrize(("kind", "words"), [*IMAGE_WORDS.items(), ("odd", IMAGE_WORDS["damaged"])])
def test_an_unusable_picture_is_named_by_its_kind(client, svc, monkeypatch, caplog, kind, words):
    fail_with(svc, monkeypatch, ImageError("cannot identify image file at offset 12", kind))
    with caplog.at_level(logging.INFO, logger="gateway.routes.errors"):
        answer = photo(client)
    assert answer.status_code == 400 and answer.get_json() == {"error": words, "status": 400}
    rid = answer.headers["X-Request-ID"]
    assert said(caplog) == [f"unusable image [request {rid}]: cannot identify image file at offset 12"]


@pytest.mark.parametrize(("status", "kind", "words", "retry"), [
    (400, "invalid", URL_WORDS["invalid"], None), (400, "refused", URL_WORDS["refused"], None),
    (502, "unreachable", URL_WORDS["unreachable"], None), (415, "not_image", URL_WORDS["not_image"], None),
    (413, "x", URL_WORDS["too_large"], None), (504, "x", URL_WORDS["slow"], None),
    (503, "x", URL_WORDS["busy"], "2"), (400, "odd", URL_WORDS["refused"], None)])
def test_a_refused_link_is_named_by_its_kind_never_by_its_address(client, svc, monkeypatch, caplog, status, kind,
                                                                   words, retry):
    from gateway import metrics

    before = metrics.FETCH_ERRORS.labels(str(status))._value.get()
    fail_with(svc, monkeypatch, UnsafeURL("10.0.0.5:8080 refused", status, kind))
    with caplog.at_level(logging.INFO, logger="gateway.routes.errors"):
        answer = client.post("/api/search", json={"image_url": "https://x.test/a.jpg"})
    assert answer.status_code == status and answer.get_json() == {"error": words, "status": status}
    assert answer.headers.get("Retry-After") == retry and "10.0.0.5" not in answer.get_data(as_text=True)
    assert metrics.FETCH_ERRORS.labels(str(status))._value.get() == before + 1
    rid = answer.headers["X-Request-ID"]
    assert said(caplog) == [f"image URL refused [request {rid}]: 10.0.0.5:8080 refused"]


@pytest.mark.parametrize(("exc", "what"), [(ModelServerError("no route to 10.0.0.5"), "embedding"),
                                           (SearchUnavailable("no route to 10.0.0.5"), "search backend")])
def test_a_failed_model_or_backend_is_a_503_in_plain_words(client, svc, monkeypatch, caplog, exc, what):
    fail_with(svc, monkeypatch, exc)
    answer = photo(client)
    assert answer.status_code == 503 and answer.get_json() == {"error": SEARCH_DOWN, "status": 503}
    assert answer.headers["Retry-After"] == "2"
    rid = answer.headers["X-Request-ID"]
    assert said(caplog, logging.WARNING) == [f"{what} failed [request {rid}]: no route to 10.0.0.5"]
    assert said(caplog) == []


def test_a_service_error_logs_its_detail_and_a_busy_one_says_when_to_retry(client, svc, monkeypatch, caplog):
    fail_with(svc, monkeypatch, Unavailable("not ready", detail="s3://bucket unreachable"))
    answer = photo(client)
    rid = answer.headers["X-Request-ID"]
    assert answer.status_code == 503 and "Retry-After" not in answer.headers
    assert said(caplog, logging.WARNING) == [f"not ready [request {rid}]: s3://bucket unreachable"]
    caplog.clear()
    fail_with(svc, monkeypatch, Busy("busy right now"))
    busy = photo(client, "/search")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2" and said(caplog, logging.WARNING) == []
    fail_with(svc, monkeypatch, ServiceError("plain"))
    assert photo(client).get_json() == {"error": "plain", "status": 500}


def test_a_photo_too_large_to_send_names_the_limit(client):
    answer = client.post("/api/search", data={"file": (io.BytesIO(b"x" * (1024 * 1024 + 70 * 1024)), "q.jpg")})
    assert answer.status_code == 413 and answer.get_json()["error"] == (
        "that photo is too large to send (over 1 MB): choose a smaller one, or take it at a lower resolution")


def raw(client, body: bytes, media: str = "image/jpeg", query: str = ""):
    return client.post(f"/api/search{query}", data=body, content_type=media)


@pytest.mark.parametrize("media", ["image/jpeg", "image/png", "application/octet-stream"])
def test_a_photo_sent_as_the_body_is_searched_with_the_query_strings_settings(client, media):
    sent = raw(client, jpeg_bytes(), media, f"?threshold=0&top_k={N}").get_json()
    upload = photo(client, threshold="0", top_k=str(N)).get_json()
    assert len(sent["results"]) == N and sent["results"] == upload["results"]


@pytest.mark.parametrize(("media", "body", "error"), [
    # a photo's bytes under another media type are not read as a photo
    ("text/plain", jpeg_bytes(), "no image: choose or drop a photo, or paste a link to one"),
    ("image/jpeg", b"", "the uploaded file is empty"),
])
def test_a_body_that_is_no_photo_is_refused_in_words(client, media, body, error):
    answer = raw(client, body, media)
    assert answer.status_code == 400 and answer.get_json()["error"] == error


def test_a_photo_body_is_held_to_the_upload_limit_on_both_sides(client):
    limit = 1024 * 1024  # max_upload_mb=1
    at = raw(client, b"x" * limit)  # read to the end: not a picture, but not too large
    assert at.status_code == 400 and "not a picture we can open" in at.get_json()["error"]
    for size in (limit + 1, limit + 70 * 1024):  # our own count, then Werkzeug's declared-length check
        over = raw(client, b"x" * size)
        assert over.status_code == 413 and over.get_json()["error"] == (
            "that photo is too large to send (over 1 MB): choose a smaller one, or take it at a lower resolution")


def test_other_http_errors_keep_their_words(client):
    assert client.get("/api/nothing-here").get_json() == {
        "error": "The requested URL was not found on the server. If you entered the URL manually please check your "
                 "spelling and try again.", "status": 404}
    assert client.get("/api/search").get_json()["status"] == 405


def test_an_unexpected_failure_is_one_sentence_and_the_details_go_to_the_log(client, svc, monkeypatch, caplog):
    fail_with(svc, monkeypatch, KeyError("internal detail"))
    answer = photo(client)
    assert answer.status_code == 500 and answer.get_json() == {
        "error": "something went wrong on our side: please try again in a moment", "status": 500}
    rid = answer.headers["X-Request-ID"]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "gateway.routes.errors"]
    assert record.getMessage() == f"unhandled error on POST /api/search [request {rid}]" and record.exc_info


# --------------------------------------------------------------------------- what an error page keeps


def test_an_error_page_keeps_the_typed_link_and_the_settings_still_valid(client, rendered):
    long_link = "https://x.test/" + "a" * 3000
    client.post("/search", data={"image_url": long_link, "threshold": "500", "category": "Bags", "top_k": "7"})
    page = rendered[-1]
    assert page["error"].startswith("threshold must be between") and page["image_url"] == long_link[:2048]
    assert page["category"] == "Bags" and page["top_k"] == 12  # options fall back to the defaults as a whole
    client.post("/search", data={"threshold": "500"})
    assert rendered[-1]["image_url"] == "" and rendered[-1]["category"] is None


def test_an_error_page_keeps_a_valid_token_its_picture_and_its_link(client, rendered, svc, monkeypatch):
    photo(client, "/search")
    token, picture = rendered[-1]["query_token"], rendered[-1]["query_picture"]
    client.post("/search", data={"query_token": token, "query_picture": picture, "threshold": "500"})
    page = rendered[-1]
    assert (page["query_token"], page["query_picture"], page["image_url"]) == (token, picture, "")
    client.post("/search", data={"query_token": token, "threshold": "500"})  # no picture sent back: none shown
    assert rendered[-1]["query_picture"] == "" and rendered[-1]["query_token"] == token
    client.post("/search", data={"query_token": token, "image_url": "https://x.test/b.jpg", "threshold": "500"})
    assert rendered[-1]["image_url"] == "https://x.test/b.jpg"
    bad = client.post("/search", data={"query_token": "forged", "threshold": "500"})
    assert bad.status_code == 400 and "query_token" not in rendered[-1]


def test_an_error_page_keeps_a_tokens_own_link(client, rendered, svc):
    from gateway.query_token import Query

    token = svc.tokens.issue(Query(np.zeros(8, np.float32), MODEL, "https://x.test/from-token.jpg"))
    client.post("/search", data={"query_token": token, "threshold": "500"})
    assert rendered[-1]["image_url"] == "https://x.test/from-token.jpg"


def test_a_photo_the_service_could_not_search_comes_back_on_the_page(client, rendered, svc, caplog):
    svc.client.fail = ModelServerError("down")
    assert photo(client, "/search").status_code == 503
    assert rendered[-1]["query_picture"].startswith("data:image/jpeg;base64,")
    client.post("/search", data={"image_url": "https://x.test/a.jpg", "file": (io.BytesIO(b""), "")})
    assert "query_picture" not in rendered[-1]  # no photo sent: nothing to keep
    assert not [r for r in caplog.records if "not kept" in r.getMessage()]
    photo(client, "/search", threshold="500")
    assert "query_picture" not in rendered[-1]  # a 400: the photo is not what failed, and it is not shown back


def test_a_photo_that_cannot_be_kept_is_said_in_the_log_only(client, rendered, svc, monkeypatch, caplog):
    def broken(data, config):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(svc.decodes, "decode", broken)
    with caplog.at_level(logging.INFO, logger="gateway.routes.errors"):
        answer = photo(client, "/search")
    assert answer.status_code == 500 and "query_picture" not in rendered[-1]
    rid = answer.headers["X-Request-ID"]
    (kept,) = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "gateway.routes.errors"]
    assert kept.getMessage() == f"the failed request's photo is not kept [request {rid}]" and kept.exc_info


def test_json_paths_and_health_checks_answer_json_and_pages_html(client):
    assert client.get("/api/products/nope/similar").is_json
    assert client.get("/healthz").is_json and client.get("/readyz").is_json
    page = client.get("/products/nope/similar")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "no product with id" in page.get_data(as_text=True)
    assert re.search(r"<html", page.get_data(as_text=True))


def test_a_stored_product_without_its_optional_fields_is_answered_with_empty_ones(tmp_path):
    """The index store is untrusted: a product row that lacks a name, a category or an image still answers."""
    client = two_product_client(tmp_path, {"id": "1"})
    (bare,) = [r for r in photo(client, threshold="0").get_json()["results"] if r["id"] == "1"]
    assert (bare["name"], bare["category"], bare["image_url"], bare["price"]) == ("", "", "/catalog/", None)


def test_scores_are_given_to_six_places_and_percents_to_one(client):
    results = photo(client, threshold="0", top_k=str(N)).get_json()["results"]
    scores = [r["score"] for r in results]
    assert all(abs(s * 1e6 - round(s * 1e6)) < 1e-6 for s in scores)
    assert any(abs(s * 1e5 - round(s * 1e5)) > 1e-6 for s in scores)  # the sixth place is used
    similarities = [r["similarity"] for r in results]
    assert all(abs(s * 10 - round(s * 10)) < 1e-9 for s in similarities)
    assert any(abs(s - round(s)) > 1e-9 for s in similarities) and all(isinstance(s, float) for s in similarities)


def test_the_time_taken_is_in_milliseconds_to_one_place(client, monkeypatch):
    from types import SimpleNamespace

    from gateway.routes import api

    ticks = iter([10.0, 10.0123456])
    monkeypatch.setattr(api, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))  # this module's clock only
    assert client.get("/api/products/100/similar").get_json()["took_ms"] == 12.3


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_a_health_checks_errors_are_json_too(client, path):
    answer = client.post(path)
    assert answer.status_code == 405 and answer.is_json and answer.get_json()["status"] == 405


def test_a_throttled_search_keeps_the_photo_and_the_settings(client, svc, monkeypatch, rendered):
    class Throttled(ServiceError):
        status = 429

    fail_with(svc, monkeypatch, Throttled("too many searches: wait a moment"))
    answer = photo(client, "/search", threshold="40")
    page = rendered[-1]
    assert answer.status_code == 429 and page["query_picture"].startswith("data:image/jpeg;base64,")
    assert page["threshold"] == 40.0 and page["error"] == "too many searches: wait a moment"
    fail_with(svc, monkeypatch, NotFound("nothing"))
    photo(client, "/search")
    assert "query_picture" not in rendered[-1]  # a 404: the photo is not kept


def test_a_failed_search_without_a_file_field_keeps_nothing_and_logs_nothing(client, svc, monkeypatch, rendered,
                                                                              caplog):
    fail_with(svc, monkeypatch, Unavailable("not now"))
    with caplog.at_level(logging.INFO, logger="gateway.routes.errors"):
        client.post("/search", data={"image_url": "https://x.test/a.jpg", "threshold": "30"})
    assert "query_picture" not in rendered[-1] and rendered[-1]["threshold"] == 30.0
    assert said(caplog) == []


def test_an_error_page_keeps_at_most_2048_characters_of_a_link_beside_a_token(client, rendered, svc):
    from gateway.query_token import Query

    token = svc.tokens.issue(Query(np.zeros(8, np.float32), MODEL, "https://x.test/from-token.jpg"))
    long_link = "https://x.test/" + "b" * 3000
    client.post("/search", data={"query_token": token, "image_url": long_link, "threshold": "500"})
    assert rendered[-1]["image_url"] == long_link[:2048] and rendered[-1]["query_token"] == token


@pytest.mark.parametrize(("fields", "status"), [
    ({"min_price": "0"}, 200), ({"min_price": "-0.5"}, 400), ({"min_price": "10", "max_price": "10"}, 200),
    ({"max_price": "1e12"}, 200), ({"min_price": "10.5", "max_price": "10"}, 400)])
def test_a_price_range_at_its_limits(client, fields, status):
    answer = photo(client, threshold="0", **fields)
    assert answer.status_code == status
    if "min_price" in fields and fields["min_price"] == "-0.5":
        assert answer.get_json()["error"] == "min_price must be between 0 and 1e+12, got -0.5"


def test_a_field_name_holding_the_replacement_character_is_refused(client):
    """Werkzeug turns bytes that are not UTF-8 into U+FFFD where it decodes with errors="replace": a field name that
    holds it is refused like a value that does (it cannot be told from text that was never UTF-8)."""
    answer = client.post("/api/search", data=b"%EF%BF%BD=1", content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400 and answer.get_json()["error"] == NOT_UTF8


def test_a_search_without_a_colour_on_a_version_with_colours(client, svc):
    """A token without a histogram (or one of another size) is ranked by the CNN alone inside its category."""
    index = svc.require_index()
    assert index.appearance is not None and index.appearance.projection is not None
    from gateway.service import SearchOptions

    for hist in (None, np.ones(3, np.float32)):
        found = svc.search_vector(np.asarray(svc.client.x[0], np.float64), MODEL, SearchOptions(0.0, 5), hist)
        assert found.hits[0].product["id"] == "100" and found.vector.dtype == np.float32


def test_a_shared_link_is_a_get_search_that_finds_the_same(shop, http_server):
    tmp_path, x = shop
    app = create_app(config_for(tmp_path, allow_private_urls=True), client=Model(x))
    pages: list[dict] = []
    url = http_server.add("/q.jpg", jpeg_bytes())
    with template_rendered.connected_to(lambda s, template, context, **e: pages.append(context), app):
        answer = app.test_client().get("/search", query_string={"image_url": url, "threshold": "20"})
    assert answer.status_code == 200 and pages[-1]["image_url"] == url
    assert pages[-1]["share_url"] == f"/search?image_url={url}&threshold=20"


def test_more_like_this_shows_more_from_where_it_was(client, rendered):
    client.get("/products/103/similar?top_k=12&show=24&threshold=0")
    assert rendered[-1]["first_new"] == 12 and len(rendered[-1]["found"].hits) == 24


def shown_error(answer) -> str:
    """The error line of an error page."""
    return re.search(r'<p class="error" role="alert">([^<]*)</p>', answer.get_data(as_text=True)).group(1)


def test_a_catalog_file_refused_says_why_in_words(shop, client):
    tmp_path, _ = shop
    for path in ("images/99.jpg", "images/3.txt", "../shop/images/3.jpg"):
        answer = client.get(f"/catalog/{path}")
        assert answer.status_code == 404 and shown_error(answer) == "not a catalog image", path
    (tmp_path / "shop" / "images" / "4.jpg").unlink()
    assert shown_error(client.get("/catalog/images/4.jpg")) == "image not found"


def test_a_stored_image_path_that_leaves_the_catalog_folder_is_refused(tmp_path):
    """The index store is untrusted: a product naming ../outside.jpg is not served, though the file is there."""
    client = two_product_client(tmp_path, {"id": "1", "name": "a", "category": "A", "image_url": "../outside.jpg"})
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes())
    answer = client.get("/catalog/../outside.jpg")
    assert answer.status_code == 404 and shown_error(answer) == "not a catalog image"


def test_a_named_file_that_is_not_an_image_type_is_never_served(tmp_path):
    client = two_product_client(tmp_path, {"id": "1", "name": "a", "category": "A", "image_url": "images/notes.txt"})
    (tmp_path / "shop" / "images" / "notes.txt").write_text("private notes")
    answer = client.get("/catalog/images/notes.txt")
    assert answer.status_code == 404 and "private notes" not in answer.get_data(as_text=True)
    assert shown_error(answer) == "not a catalog image"


def test_without_a_catalog_folder_no_file_is_looked_for(shop):
    tmp_path, x = shop
    app = create_app(config_for(tmp_path, catalog_dir=""), client=Model(x))
    assert shown_error(app.test_client().get("/catalog/images/3.jpg")) == "not a catalog image"


def test_an_http_error_without_a_code_is_a_500(app):
    from werkzeug.exceptions import HTTPException

    from gateway.routes.errors import on_httperror_answer

    with app.test_request_context("/api/x"):
        body, status = on_httperror_answer(HTTPException(description="odd"))
    assert status == 500 and body.get_json() == {"error": "odd", "status": 500}

