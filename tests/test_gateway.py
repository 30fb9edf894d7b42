"""Gateway routes with Flask's test client. TorchServe is stubbed by the in-process embedder here;
tests/test_e2e.py runs the same paths against a real TorchServe and a real gunicorn."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from devtools.process import REPO
from gateway import create_app
from gateway.config import Config
from tests.conftest import ADMIN, demo_image, jpeg_bytes


def upload(client, path, data, **fields):
    return client.post(path, data={"file": (io.BytesIO(data), "q.jpg"), **fields}, content_type="multipart/form-data")


def test_api_search_finds_the_product_itself_first(client):
    resp = upload(client, "/api/search", demo_image(10109), threshold="0", top_k="5")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["results"][0]["id"] == "10109" and body["results"][0]["score"] >= 0.99
    assert len(body["results"]) == 5 and body["model"].startswith("efficientnet_lite0-")
    assert set(body["results"][0]) == {"id", "name", "category", "price", "image_url", "product_url",
                                             "score", "similarity", "match"}
    assert body["results"][0]["image_url"] == "/catalog/images/10109.jpg"
    assert client.get(body["results"][0]["image_url"]).status_code == 200


def test_category_filter_and_similar(client):
    body = upload(client, "/api/search", demo_image(10109), threshold="0", top_k="50", category="watches").get_json()
    assert body["results"] and all(r["category"] == "Watches" for r in body["results"])
    for spelling in (" WATCHES ", "Watches", "wAtChEs"):  # case and surrounding spaces do not matter
        again = upload(client, "/api/search", demo_image(10109), threshold="0", top_k="50", category=spelling)
        assert [r["id"] for r in again.get_json()["results"]] == [r["id"] for r in body["results"]]
    none = upload(client, "/api/search", demo_image(10109), threshold="0", category="Watch").get_json()
    assert none["results"] == []  # no such category: nothing, rather than everything
    sim = client.get("/api/products/10109/similar?threshold=0&top_k=3").get_json()
    assert len(sim["results"]) == 3 and "10109" not in [r["id"] for r in sim["results"]]


def test_html_search_renders_results(client):
    resp = upload(client, "/search", demo_image(10109), threshold="0", top_k="4")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and html.count('class="card"') == 4
    assert "Fastrack Women Denim Analogue Steel Watch" in html and ">100%</span>" in html
    assert html.count("Exact match") == 1 and 'class="price"' not in html  # the sample catalog has no prices


def test_similar_page_makes_no_model_call(client, stub):
    resp = client.get("/products/10109/similar?threshold=0&top_k=3")
    assert resp.status_code == 200 and stub.calls == 0


BAD = [
    ("no image", {}, 400, "no image"),
    ("text bytes", {"file": b"hello"}, 400, "not a picture we can open"),
    ("truncated", {"file": jpeg_bytes()[:300]}, 400, "damaged or incomplete"),
    ("empty file", {"file": b""}, 400, "empty"),
    ("threshold high", {"file": jpeg_bytes(), "threshold": "150"}, 400, "threshold"),
    ("threshold text", {"file": jpeg_bytes(), "threshold": "abc"}, 400, "threshold"),
    ("top_k zero", {"file": jpeg_bytes(), "top_k": "0"}, 400, "top_k"),
    ("bad url scheme", {"image_url": "file:///etc/passwd"}, 400, "http"),
]


@pytest.mark.parametrize("name, form, status, message", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("path", ["/search", "/api/search"])
def test_bad_input_is_a_clear_4xx(client, path, name, form, status, message):
    form = {k: (io.BytesIO(v), "a.jpg") if isinstance(v, bytes) else v for k, v in form.items()}
    resp = client.post(path, data=form, content_type="multipart/form-data")
    assert resp.status_code == status
    if path.startswith("/api"):
        assert message in resp.get_json()["error"]
    else:
        html = resp.get_data(as_text=True)
        assert 'class="error"' in html and message in html and "Traceback" not in html
    assert upload(client, "/api/search", demo_image(10109)).status_code == 200  # still serving


def test_unknown_product_and_too_large_upload(client):
    resp = client.get("/api/products/nope/similar")
    assert resp.status_code == 404 and "no product with id 'nope'" in resp.get_json()["error"]
    assert client.get("/products/nope/similar").status_code == 404
    big = io.BytesIO()
    Image.effect_noise((1200, 1200), 64).convert("RGB").save(big, format="PNG")
    resp = upload(client, "/api/search", big.getvalue())
    assert resp.status_code == 413 and "1 MB" in resp.get_json()["error"]


def test_torchserve_down_is_503_and_not_ready(client, stub, caplog):
    stub.down = True
    resp = upload(client, "/api/search", demo_image(10109))
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "2"
    assert resp.get_json()["error"] == "search is temporarily unavailable: please try again in a moment"
    assert "127.0.0.1" not in resp.get_data(as_text=True) and "unreachable at http://127.0.0.1:1" in caplog.text
    ready = client.get("/readyz", environ_overrides=ADMIN)
    assert ready.status_code == 503 and "not ready" in ready.get_json()["reason"]
    stub.down = False
    assert client.get("/readyz").status_code == 200


def test_a_photo_the_service_could_not_search_is_kept_on_the_page(client, stub):
    """503 on the page: the photo comes back as the page's picture (no token: the page sends it again on the next
    Search) with the settings; a photo that is itself the problem (400) is not shown back."""
    stub.down = True
    page = client.post("/search", data={"file": (io.BytesIO(demo_image(10109)), "q.jpg"), "threshold": "40"})
    html = page.get_data(as_text=True)
    assert page.status_code == 503 and 'id="preview" alt="Your photo" src="data:image/jpeg;base64,' in html
    assert 'id="query-picture" value="data:image/jpeg;base64,' in html and 'id="query-token" value=""' in html
    assert 'value="40"' in html and "search is temporarily unavailable" in html
    stub.down = False
    bad = client.post("/search", data={"file": (io.BytesIO(b"not a picture"), "q.jpg")})
    assert bad.status_code == 400 and "data:image/jpeg" not in bad.get_data(as_text=True)
    none = client.post("/search", data={"image_url": "", "threshold": "40"})
    assert none.status_code == 400 and "data:image/jpeg" not in none.get_data(as_text=True)


def test_missing_index_keeps_process_up(tmp_path, stub):
    config = Config(index_uri=str(tmp_path / "none"), ready_cache_s=0, index_cache_dir=str(tmp_path / "copy"))
    app = create_app(config, client=stub).test_client()
    assert app.get("/healthz").status_code == 200
    assert app.get("/readyz").status_code == 503
    refused = upload(app, "/api/search", jpeg_bytes())
    assert refused.status_code == 503  # the store's path is in the log, never in the answer
    assert refused.get_json()["error"] == "search is not ready right now: please try again in a few minutes"
    assert str(tmp_path) not in refused.get_data(as_text=True)
    assert app.get("/").status_code == 200


def test_catalog_images_stay_inside_the_catalog(client):
    image = client.get("/catalog/images/10109.jpg")
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert client.get("/catalog/../products.csv").status_code == 404
    assert client.get("/catalog/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert client.get("/catalog/images/none.jpg").status_code == 404


def test_import_gateway_loads_neither_pandas_nor_torch():
    code = ("import sys, gateway, gateway.__main__; "
            "heavy = sorted(m for m in ('pandas', 'torch', 'torchvision', 'timm') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", ["/", "/api/products/nope/similar", "/healthz", "/static/page.js", "/no-such-page"])
def test_every_answer_carries_the_security_headers(client, path):
    resp = client.get(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_has_no_inline_script(client):
    html = client.get("/").get_data(as_text=True)
    assert "<script>" not in html and 'src="/static/page.js"' in html and " on" + "click=" not in html


def test_catalog_serves_only_images_the_index_names(small_index, stub, tmp_path):
    """A file a supplier dropped into the catalog folder (CSV, HTML, SVG, an image no product names) is not
    served; without CATALOG_DIR nothing is, whatever the index's manifest says its catalog folder was."""
    folder = small_index.parent
    (folder / "note.html").write_text("<script>alert(1)</script>")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / "images" / "stray.jpg").write_bytes(demo_image(10109))
    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    catalog_dir=str(folder))
    served = create_app(config, client=stub).test_client()
    assert served.get("/catalog/images/10109.jpg").status_code == 200
    for path in ("products.csv", "note.html", "logo.svg", "images/stray.jpg"):
        assert served.get(f"/catalog/{path}").status_code == 404, path
    unset = create_app(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c2")),
                       client=stub).test_client()
    assert unset.get("/catalog/images/10109.jpg").status_code == 404


@pytest.mark.parametrize(("offset", "status"), [("0", 200), ("100", 200), ("101", 400), ("-1", 400), ("1.5", 400)])
def test_offset_limits_on_both_sides(client, offset, status):
    resp = client.get(f"/api/products/10109/similar?threshold=0&top_k=3&offset={offset}")
    assert resp.status_code == status, resp.get_data(as_text=True)
    if status == 200:
        ids = [r["id"] for r in resp.get_json()["results"]]
        whole = [r["id"] for r in client.get("/api/products/10109/similar?threshold=0&top_k=100").get_json()["results"]]
        assert ids == whole[int(offset):int(offset) + 3]


def test_an_error_page_keeps_what_the_shopper_entered(client):
    """After an error the page still holds the typed URL and every valid setting (the bad one is named)."""
    typed = "http://nothing.invalid/red-dress.jpg"
    page = client.post("/search", data={"image_url": typed, "threshold": "55", "top_k": "7", "category": "Watches",
                                        "category_first": "0"})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "load a picture from that link" in html and "nothing.invalid" not in html.split(
        'value="')[0]
    assert f'value="{typed}"' in html and 'value="55"' in html and 'value="7"' in html
    assert "<option selected>Watches</option>" in html and 'name="category_first" value="1" checked' not in html
    bad = client.post("/search", data={"image_url": typed, "threshold": "500"}).get_data(as_text=True)
    assert "threshold must be between 0 and 100" in bad and f'value="{typed}"' in bad


# --------------------------------------------------------------------------- the query stays: tokens, crop, links


def test_api_refines_with_the_query_token_without_a_model_call(client, stub):
    first = upload(client, "/api/search", demo_image(10109), threshold="0", top_k="5").get_json()
    calls = stub.calls
    again = client.post("/api/search", json={"query_token": first["query_token"], "threshold": 0, "top_k": 5})
    assert again.status_code == 200 and stub.calls == calls
    assert [r["id"] for r in again.get_json()["results"]] == [r["id"] for r in first["results"]]
    narrower = client.post("/api/search", json={"query_token": first["query_token"], "threshold": 0, "top_k": 5,
                                                "category": "Handbags"}).get_json()
    assert {r["category"] for r in narrower["results"]} == {"Handbags"} and stub.calls == calls


def test_a_new_photo_wins_over_the_token(client):
    token = upload(client, "/api/search", demo_image(10109), threshold="0").get_json()["query_token"]
    other = upload(client, "/api/search", demo_image(10229), threshold="0", query_token=token).get_json()
    assert other["results"][0]["id"] == "10229"


@pytest.mark.parametrize(("fields", "message"), [
    ({"query_token": "q2.forged.token"}, "choose the photo again"),
    ({"query_token": "", "crop": "0,0,1,1"}, "no image"),
])
def test_unusable_queries_get_a_clear_400(client, fields, message):
    resp = client.post("/api/search", json=fields)
    assert resp.status_code == 400 and message in resp.get_json()["error"]


def test_a_token_cannot_be_cropped_and_one_of_another_model_is_refused(client):
    svc = client.application.extensions["photo"]
    token = upload(client, "/api/search", demo_image(10109)).get_json()["query_token"]
    cropped_token = client.post("/api/search", json={"query_token": token, "crop": "0,0,0.5,0.5"})
    assert cropped_token.status_code == 400 and "give the photo again" in cropped_token.get_json()["error"]
    from gateway.query_token import Query

    stale = svc.tokens.issue(Query(svc.tokens.verify(token).vector, "resnet18-old"))
    resp = client.post("/api/search", json={"query_token": stale})
    assert resp.status_code == 400 and "updated since this search" in resp.get_json()["error"]


def test_api_crop_searches_the_region(client):
    both = Image.new("RGB", (448, 224), "white")
    both.paste(Image.open(io.BytesIO(demo_image(10109))).convert("RGB").resize((224, 224)), (0, 0))
    both.paste(Image.open(io.BytesIO(demo_image(10229))).convert("RGB").resize((224, 224)), (224, 0))
    out = io.BytesIO()
    both.save(out, "JPEG", quality=95)
    right = upload(client, "/api/search", out.getvalue(), threshold="0", crop="0.5,0,1,1").get_json()
    left = upload(client, "/api/search", out.getvalue(), threshold="0", crop="0,0,0.5,1").get_json()
    assert right["results"][0]["id"] == "10229" and left["results"][0]["id"] == "10109"
    tiny = upload(client, "/api/search", out.getvalue(), crop="0,0,0.03,0.05")
    assert tiny.status_code == 400 and "too small" in tiny.get_json()["error"]


def test_the_page_keeps_the_query_and_shows_more_without_the_photo(client, stub):
    html = upload(client, "/search", demo_image(10109), threshold="0").get_data(as_text=True)
    token = re.search(r'name="query_token" id="query-token" value="([^"]+)"', html).group(1)
    shown = re.search(r'id="query-picture" value="(data:image/jpeg;base64,[^"]+)"', html).group(1)
    assert f'src="{shown}"' in html and html.count('class="card"') == 12
    calls = stub.calls
    more = client.post("/search", data={"query_token": token, "query_picture": shown, "threshold": "0",
                                        "top_k": "12", "show": "24"}).get_data(as_text=True)
    assert more.count('class="card"') == 24 and 'data-first-new="12"' in more and stub.calls == calls
    assert f'src="{shown}"' in more
    forged = client.post("/search", data={"query_token": token, "query_picture": "data:image/jpeg;base64,AAAA"})
    assert 'src="data:image/jpeg;base64,AAAA"' not in forged.get_data(as_text=True)  # not the token's picture


def test_an_error_page_keeps_the_query_token_and_picture(client):
    html = upload(client, "/search", demo_image(10109)).get_data(as_text=True)
    token = re.search(r'name="query_token" id="query-token" value="([^"]+)"', html).group(1)
    shown = re.search(r'id="query-picture" value="([^"]+)"', html).group(1)
    bad = client.post("/search", data={"query_token": token, "query_picture": shown, "threshold": "500"})
    page = bad.get_data(as_text=True)
    assert bad.status_code == 400 and f'value="{token}"' in page and f'src="{shown}"' in page


def test_get_search_is_a_shareable_link_and_goes_home_without_a_query(client, stub, http_server, small_index,
                                                                     tmp_path):
    assert client.get("/search").status_code == 302
    assert client.get("/search?threshold=10").headers["Location"].endswith("/")
    app = create_app(Config(index_uri=str(small_index), index_poll_s=0, allow_private_urls=True,
                            index_cache_dir=str(tmp_path / "c3")), client=stub)
    url = http_server.add("/q/watch.jpg", demo_image(10109))
    page = app.test_client().post("/search", data={"image_url": url, "threshold": "20"}).get_data(as_text=True)
    link = re.search(r'href="([^"]+)" id="share"', page).group(1).replace("&amp;", "&")
    assert link.startswith("/search?") and "threshold=20" in link and "top_k" not in link  # defaults left out
    shared = app.test_client().get(link).get_data(as_text=True)
    assert "Fastrack Women Denim Analogue Steel Watch" in shared and f'value="{url}"' in shared
    assert 'href="/products/10109/similar?threshold=20"' in app.test_client().get(
        "/products/10109/similar?threshold=20").get_data(as_text=True).replace("&amp;", "&")


# --------------------------------------------------------------------------- price range


@pytest.fixture
def priced(priced_index, stub, tmp_path):
    config = Config(index_uri=str(priced_index), index_poll_s=0, index_cache_dir=str(tmp_path / "priced-copy"))
    return create_app(config, client=stub).test_client()


def prices_of(resp) -> list[float]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [r["price"] for r in resp.get_json()["results"]]


@pytest.mark.parametrize(("low", "high", "want"), [
    ("20", "40", [20.0, 40.0]),  # 30 is unknown (every fourth); both ends are inclusive
    ("20.0001", "39.9999", []),  # one past each end: 20 and 40 drop out
    ("0", "0", [0.0]),  # price 0 is a price
    ("200", "", [200.0, 210.0, 220.0]),
    ("", "10", [0.0, 10.0]),
])
def test_price_range_on_both_sides(priced, low, high, want):
    # 10195 has no price, so "more like this" leaving it out leaves out no price
    got = prices_of(priced.get(f"/api/products/10195/similar?threshold=0&top_k=100&category_first=0"
                               f"&min_price={low}&max_price={high}"))
    assert sorted(got) == want


def test_an_unknown_price_is_left_out_of_any_range(priced):
    everything = prices_of(priced.get("/api/products/10195/similar?threshold=0&top_k=100"))
    assert None in everything
    ranged = prices_of(priced.get("/api/products/10195/similar?threshold=0&top_k=100&min_price=0"))
    assert None not in ranged and len(ranged) == len(everything) - everything.count(None)


@pytest.mark.parametrize(("query", "message"), [
    ("min_price=-0.01", "min_price must be between 0 and"),
    ("max_price=1e12", None),
    ("max_price=1.0000001e12", "max_price must be between"),
    ("min_price=50&max_price=40", "is above the highest"),
    ("min_price=nan", "min_price must be between"),
    ("min_price=cheap", "min_price must be a number"),
])
def test_price_range_limits(priced, query, message):
    resp = priced.get(f"/api/products/10109/similar?threshold=0&{query}")
    if message is None:
        assert resp.status_code == 200
    else:
        assert resp.status_code == 400 and message in resp.get_json()["error"]


def test_the_page_offers_a_price_range_only_when_the_catalog_has_prices(priced, client):
    page = priced.get("/").get_data(as_text=True)
    assert 'name="min_price"' in page and 'name="max_price"' in page
    assert 'name="min_price"' not in client.get("/").get_data(as_text=True)  # the sample catalog has none
    results = upload(priced, "/search", demo_image(10109), threshold="0", min_price="20", max_price="100")
    html = results.get_data(as_text=True)
    assert 'value="20"' in html and 'value="100"' in html and html.count('class="card"') > 0
    prices = [float(p.replace(",", "")) for p in re.findall(r'<p class="price">([\d,.]+)</p>', html)]
    assert prices and all(20 <= p <= 100 for p in prices)


@pytest.mark.parametrize(("field", "value", "refusal"), [
    ("threshold", "0", None), ("threshold", "100", None), ("threshold", "99.99", None),
    ("threshold", "-0.01", "threshold must be between 0 and 100, got -0.01"),
    ("threshold", "100.01", "threshold must be between 0 and 100, got 100.01"),
    ("threshold", "nan", "threshold must be between 0 and 100, got nan"),
    ("top_k", "1", None), ("top_k", "100", None),
    ("top_k", "0", "top_k must be between 1 and 100, got 0"),
    ("top_k", "101", "top_k must be between 1 and 100, got 101"),
    ("top_k", "2.5", "top_k must be a whole number between 1 and 100, got '2.5'"),
    ("category_first", "off", None), ("category_first", "maybe", "category_first must be true or false, got 'maybe'"),
])
def test_search_settings_on_both_sides_of_their_limits(client, field, value, refusal):
    resp = client.get(f"/api/products/10109/similar?{field}={value}")
    assert resp.status_code == (200 if refusal is None else 400)
    if refusal is not None:
        assert resp.get_json()["error"] == refusal


@pytest.mark.parametrize(("body", "refusal"), [
    ({"top_k": 3}, None), ({"top_k": 3.0}, None), ({"threshold": 0}, None),
    ({"top_k": 2.5}, "top_k must be a whole number between 1 and 100, got 2.5"),
    ({"top_k": True}, "top_k must be a whole number between 1 and 100, got True"),
    ({"threshold": False}, "threshold must be a number between 0 and 100, got False"),
    ({"threshold": [1]}, "threshold must be a number between 0 and 100, got [1]"),
])
def test_json_settings_are_numbers_not_look_alikes(client, body, refusal):
    token = upload(client, "/api/search", demo_image(10109), threshold="0").get_json()["query_token"]
    resp = client.post("/api/search", json={"query_token": token, **body})
    assert resp.status_code == (200 if refusal is None else 400), resp.get_json()
    if refusal is not None:
        assert resp.get_json()["error"] == refusal
    else:
        assert len(resp.get_json()["results"]) <= body.get("top_k", 12)


def test_a_json_body_of_exactly_16_kb_is_read_and_one_byte_more_is_refused(client):
    def body(size: int) -> bytes:
        text = json.dumps({"image_url": "", "pad": ""})
        return json.dumps({"image_url": "", "pad": "x" * (size - len(text))}).encode()

    assert len(body(48 * 1024)) == 48 * 1024
    at_limit = client.post("/api/search", data=body(48 * 1024), content_type="application/json")
    assert at_limit.status_code == 400 and "KB" not in at_limit.get_json()["error"]  # read: no image given
    over = client.post("/api/search", data=body(48 * 1024 + 1), content_type="application/json")
    assert over.status_code == 413 and over.get_json()["error"] == "a JSON request may be at most 48 KB"


@pytest.fixture
def decodes(monkeypatch):
    """Counts every decode of a query image in the gateway (the model server's own decode is not the gateway's)."""
    import gateway.images
    import ranking.appearance
    from modelio import imaging

    calls: list[int] = []

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return imaging.decode_image(data, *args, **kwargs)

    monkeypatch.setattr(gateway.images, "decode_image", counted)
    monkeypatch.setattr(ranking.appearance, "decode_image", counted)
    return calls


@pytest.mark.parametrize(("path", "fields"), [("/api/search", {}), ("/search", {}),
                                              ("/api/search", {"crop": "0.1,0.1,0.9,0.9"}),
                                              ("/search", {"crop": "0.1,0.1,0.9,0.9"})])
def test_a_query_photo_is_decoded_once(client, decodes, path, fields):
    """The check, the crop, the colour histogram and the page's picture all read one decoded image."""
    photo = jpeg_bytes(size=(1600, 1200))
    resp = upload(client, path, photo, threshold="0", **fields)
    assert resp.status_code == 200 and decodes == [len(photo)]


def test_an_image_link_is_decoded_once(small_index, stub, tmp_path, http_server, decodes):
    link = http_server.add("/q.jpg", demo_image(10109))
    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    allow_private_urls=True)
    client = create_app(config, client=stub).test_client()
    resp = client.post("/search", data={"image_url": link, "threshold": "0"})
    assert resp.status_code == 200 and len(decodes) == 1


def test_an_empty_file_field_means_the_link_is_the_query(small_index, stub, tmp_path, http_server):
    """A browser sends the form's file field even when no file was chosen (no filename): the link is used."""
    link = http_server.add("/q.jpg", demo_image(10109))
    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    allow_private_urls=True)
    client = create_app(config, client=stub).test_client()
    resp = client.post("/api/search", data={"file": (io.BytesIO(b""), ""), "image_url": link,
                                            "threshold": "0"}, content_type="multipart/form-data")
    assert resp.status_code == 200 and resp.get_json()["results"][0]["id"] == "10109"


def test_an_image_link_over_the_limit_is_refused_and_one_at_it_is_fetched(small_index, stub, tmp_path, http_server):
    from gateway.query_token import MAX_URL_CHARS

    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    allow_private_urls=True)
    client = create_app(config, client=stub).test_client()
    path = "/" + "p" * (MAX_URL_CHARS - len(http_server.url) - 1)
    at_limit = http_server.add(path, demo_image(10109))
    assert len(at_limit) == MAX_URL_CHARS
    found = client.post("/api/search", json={"image_url": at_limit, "threshold": 0})
    assert found.status_code == 200 and found.get_json()["results"][0]["id"] == "10109"
    refined = client.post("/api/search", json={"query_token": found.get_json()["query_token"], "image_url": at_limit})
    assert refined.status_code == 200 and len(http_server.requests) == 1  # the token carried the whole link
    over = client.post("/api/search", json={"image_url": at_limit + "x"})
    assert over.status_code == 400 and "too long" in over.get_json()["error"] and len(http_server.requests) == 1


def test_every_answer_carries_a_request_id_and_a_well_formed_one_is_kept(client):
    made = client.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made) and client.get("/healthz").headers["X-Request-Id"] != made
    assert client.get("/healthz", headers={"X-Request-Id": "lb-1234.5:a"}).headers["X-Request-Id"] == "lb-1234.5:a"
    for forged in ("a b", "x" * 65, "line\\nbreak", "<script>"):  # not simple, or too long: a new one is made
        got = client.get("/healthz", headers={"X-Request-Id": forged}).headers["X-Request-Id"]
        assert got != forged and re.fullmatch(r"[0-9a-f]{32}", got)
    assert client.get("/healthz", headers={"X-Request-Id": "x" * 64}).headers["X-Request-Id"] == "x" * 64


@pytest.mark.parametrize("how", ["query", "form", "valid"])
def test_text_that_is_not_utf8_is_a_400_in_plain_words(client, how):
    if how == "valid":  # the other side: real UTF-8 (é, €) is searched for
        resp = client.post("/api/search?category=Caf%C3%A9%E2%82%AC", data={"file": (io.BytesIO(jpeg_bytes()),
                                                                                  "a.jpg")},
                           content_type="multipart/form-data")
        assert resp.status_code == 200
        return
    if how == "query":
        resp = client.post("/api/search?category=%ff%fe", data={"file": (io.BytesIO(jpeg_bytes()), "a.jpg")},
                           content_type="multipart/form-data")
    else:
        body = (b'--B\r\nContent-Disposition: form-data; name="category"\r\n\r\n\xff\xfe\r\n--B\r\n'
                b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
                + jpeg_bytes() + b"\r\n--B--\r\n")
        resp = client.post("/api/search", data=body, content_type="multipart/form-data; boundary=B")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "the request has text that is not valid UTF-8: send it again as plain text"


def test_the_results_heading_says_what_it_counts(client):
    html = upload(client, "/search", demo_image(10109), threshold="0", top_k="5").get_data(as_text=True)
    heading = html.split('<h2 id="results-title" class="summary">', 1)[1].split("</h2>", 1)[0]
    assert heading == "The 5 closest products at ≥ 0% similarity"  # the page's 5, not "5 results"; no ms
    one = upload(client, "/search", demo_image(10109), threshold="0", top_k="1").get_data(as_text=True)
    assert "The 1 closest product at ≥ 0% similarity</h2>" in one
    none = upload(client, "/search", demo_image(10109), threshold="100", category="zz").get_data(as_text=True)
    assert "No products at ≥ 100% similarity in zz</h2>" in none


def test_an_unexpected_failure_is_one_sentence_in_the_shoppers_words_and_the_details_go_to_the_log(
        small_index, tmp_path, caplog):
    class Broken:
        def embed(self, blob: bytes):
            raise KeyError("/srv/secret/path in the model server")

        def probe(self) -> str:
            return "x"

    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"))
    web = create_app(config, client=Broken()).test_client()
    resp = upload(web, "/api/search", demo_image(10109))
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "something went wrong on our side: please try again in a moment"
    assert "secret" not in resp.get_data(as_text=True) and "/srv/secret/path" in caplog.text
