"""End to end, no stubs: sample catalog → index built through a real TorchServe → gunicorn gateway → HTTP."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from scripts.build_index import main as build_cli
from tests.conftest import DEMO_CSV, demo_image, jpeg_bytes

pytestmark = pytest.mark.integration

PRODUCTS = list(csv.DictReader(DEMO_CSV.open()))


@pytest.fixture
def gateway(start_gateway, demo_index, torchserve, http_server):
    return start_gateway(INDEX_URI=str(demo_index), TORCHSERVE_URL=torchserve.url, ALLOW_PRIVATE_URLS="1",
                         MAX_UPLOAD_MB="2", CATALOG_DIR=str(DEMO_CSV.parent))


def search(gw, blob: bytes, **fields) -> requests.Response:
    return requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", blob)}, data=fields, timeout=60)


def test_ready_and_catalog_image_ranks_first(gateway):
    ready = requests.get(f"{gateway.admin_url}/readyz", timeout=30).json()
    assert ready["ready"] is True and ready["products"] == 240
    for pid in ("10109", "10175", "11052"):
        body = search(gateway, demo_image(pid), threshold="0", top_k="5").json()
        assert body["results"][0]["id"] == pid and body["results"][0]["score"] >= 0.99
        assert body["model"] == ready["model"] and body["took_ms"] > 0


def test_the_photo_sent_as_the_body_is_searched_as_an_upload_is(gateway):
    """``curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'``: the settings in the query string, no form."""
    blob = demo_image("10109")
    upload = search(gateway, blob, threshold="0", top_k="5").json()
    for media in ("image/jpeg", "application/octet-stream"):
        body = requests.post(f"{gateway.url}/api/search", params={"threshold": "0", "top_k": "5"}, data=blob,
                             headers={"Content-Type": media}, timeout=60)
        assert body.status_code == 200, body.text[:300]
        results = body.json()["results"]  # embedded again, maybe in another batch: the same to float tolerance
        assert [r["id"] for r in results] == [r["id"] for r in upload["results"]]
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in upload["results"]], abs=1e-4)
    empty = requests.post(f"{gateway.url}/api/search", data=b"", headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error"] == "the uploaded file is empty"


def test_same_category_precision_at_5(gateway):
    """Leave-one-out over the sample catalog, every product's photo as a query through the whole stack.

    By similarity alone: the query's own photo is in the catalog, so a category-first vote would see its
    label (scripts/evaluate.py measures category-first ranking without that leak)."""
    category = {p["id"]: p["category"] for p in PRODUCTS}

    def precision(product: dict) -> float:
        results = search(gateway, demo_image(product["id"]), threshold="0", top_k="6",
                         category_first="false").json()["results"]
        others = [r for r in results if r["id"] != product["id"]][:5]
        return sum(category[r["id"]] == product["category"] for r in others) / 5

    with ThreadPoolExecutor(max_workers=8) as pool:
        scores = list(pool.map(precision, PRODUCTS))
    p_at_5 = sum(scores) / len(scores)
    print(f"same-category precision@5 over {len(scores)} products: {p_at_5:.3f}")
    assert p_at_5 >= 0.6


def test_category_first_by_default(gateway):
    body = search(gateway, demo_image("10109"), threshold="0", top_k="30").json()
    guess = body["category_first"]
    assert guess["category"] == "Watches" and guess["source"] == "vote" and guess["results"] >= 1
    assert [r["category"] == "Watches" for r in body["results"]] == [True] * guess["results"] + [False] * (
        len(body["results"]) - guess["results"])
    alone = search(gateway, demo_image("10109"), threshold="0", top_k="30", category_first="false").json()
    assert alone["category_first"] is None
    assert [r["score"] for r in alone["results"]] == sorted((r["score"] for r in alone["results"]), reverse=True)


def test_category_first_beats_similarity_alone_on_held_out_photos(torchserve, start_gateway, tmp_path):
    """The shipped default through the whole stack, without the self-match leak: every 6th sample product
    is left out of the catalog, and its photo is the query."""
    held = PRODUCTS[::6]
    (tmp_path / "images").mkdir()
    with (tmp_path / "products.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(PRODUCTS[0]))
        writer.writeheader()
        for i, product in enumerate(PRODUCTS):
            if i % 6:
                writer.writerow(product)
                (tmp_path / product["image_url"]).write_bytes(demo_image(product["id"]))
    assert build_cli(["--catalog", str(tmp_path / "products.csv"), "--output", str(tmp_path / "index"),
                      "--torchserve-url", torchserve.url, "--cache-dir", str(tmp_path / "cache"),
                      "--no-progress"]) == 0
    gw = start_gateway(INDEX_URI=str(tmp_path / "index"), TORCHSERVE_URL=torchserve.url)

    def precision(product: dict, first: str) -> float:
        body = search(gw, demo_image(product["id"]), threshold="0", top_k="5", category_first=first).json()
        assert product["id"] not in {r["id"] for r in body["results"]}
        return sum(r["category"] == product["category"] for r in body["results"]) / 5

    alone = sum(precision(p, "false") for p in held) / len(held)
    first = sum(precision(p, "true") for p in held) / len(held)
    print(f"held-out precision@5 over {len(held)} photos: similarity alone {alone:.3f}, category-first {first:.3f}")
    assert first > alone


def test_image_url_query_and_html_page(gateway, http_server):
    url = http_server.add("/q/watch.jpg", demo_image("10140"))
    body = requests.post(f"{gateway.url}/api/search", json={"image_url": url, "threshold": 0}, timeout=60).json()
    assert body["results"][0]["id"] == "10140"
    page = requests.post(f"{gateway.url}/search", data={"image_url": url, "threshold": "50"}, timeout=60)
    assert page.status_code == 200 and "Esprit Women Rocks Houston Black Silver Watches" in page.text
    assert requests.get(f"{gateway.url}/", timeout=10).status_code == 200


def test_more_like_this(gateway):
    body = requests.get(f"{gateway.url}/api/products/10109/similar", params={"threshold": 0, "top_k": 5},
                        timeout=10).json()
    assert len(body["results"]) == 5 and "10109" not in {r["id"] for r in body["results"]}


@pytest.mark.parametrize("api", [True, False], ids=["json", "html"])
def test_bad_inputs_get_clear_4xx_and_gateway_keeps_serving(gateway, http_server, api):
    missing = http_server.add("/q/missing.jpg", b"", status=404)
    cases = [
        (dict(data={"threshold": "70"}), 400, "no image"),
        (dict(files={"file": ("a.jpg", b"<html>not an image</html>")}), 400, "not a picture we can open"),
        (dict(files={"file": ("a.jpg", demo_image("10109")[:2000])}), 400, "damaged or incomplete"),
        (dict(files={"file": ("a.jpg", jpeg_bytes())}, data={"threshold": "101"}), 400, "threshold"),
        (dict(files={"file": ("a.jpg", jpeg_bytes())}, data={"threshold": "-1"}), 400, "threshold"),
        (dict(data={"image_url": missing}), 400, "load a picture from that link"),
        (dict(files={"file": ("a.jpg", b"\0" * (3 * 1024 * 1024))}), 413, "too large"),
    ]
    path = "/api/search" if api else "/search"
    for kwargs, status, message in cases:
        resp = requests.post(f"{gateway.url}{path}", timeout=60, **kwargs)
        assert resp.status_code == status, (kwargs, resp.text[:300])
        text = resp.json()["error"] if api else resp.text
        assert message in text and "Traceback" not in text
    unknown = requests.get(f"{gateway.url}{'/api' if api else ''}/products/999999/similar", timeout=10)
    assert unknown.status_code == 404 and "no product with id" in unknown.text
    assert search(gateway, demo_image("10109")).status_code == 200
    assert requests.get(f"{gateway.url}/readyz", timeout=30).status_code == 200


def test_whitened_index_same_transform_for_queries(start_gateway, torchserve, local_embedder, tmp_path):
    """A whitened index served with the real TorchServe: the gateway transforms each query vector
    exactly as the stored ones, so a catalog photo still finds itself first."""
    from catalog.build import build_index
    from indexstore.store import open_store, read_current

    out = tmp_path / "white"
    build_index(DEMO_CSV, out, local_embedder, tmp_path / "cache", progress=False, whiten_min=10)
    assert read_current(open_store(out)).whitening() is not None
    gw = start_gateway(INDEX_URI=str(out), TORCHSERVE_URL=torchserve.url)
    for pid in ("10109", "10664", "11052"):
        top = search(gw, demo_image(pid), threshold="0", top_k="3").json()["results"][0]
        assert top["id"] == pid and top["score"] >= 0.999 and top["similarity"] == 100.0


def test_a_shoppers_cropped_photo_of_a_product_finds_that_product_first(gateway):
    """The shopper-photo protocol's scene (evaluation/scenes.py), through the real TorchServe and gateway: each
    product cut out of its studio photo, pasted on a busy room-like background among other products, turned,
    re-lit, blurred, JPEG'd; cropped to its box, it comes back first, above same-colour lookalikes of its kind
    (black casual shoes, white checked shirts), and the matches shown never increase down the list."""
    import numpy as np
    from PIL import Image

    from evaluation.scenes import make_scene

    by_id = {p["id"]: p for p in PRODUCTS}
    clutter = [Image.open(DEMO_CSV.parent / PRODUCTS[i]["image_url"]) for i in (5, 50)]
    for pid in ("10109", "10175", "11052"):
        photo = Image.open(DEMO_CSV.parent / by_id[pid]["image_url"])
        scene = make_scene(photo, 0, np.random.default_rng(11), clutter)
        crop = ",".join(f"{v:.4f}" for v in scene.box)
        body = search(gateway, scene.jpeg, crop=crop, threshold="0", top_k="10").json()
        results = body["results"]
        assert results[0]["id"] == pid, [(r["name"], r["match"]) for r in results[:3]]
        same_kind = [r for r in results[1:] if r["category"] == by_id[pid]["category"]]
        assert same_kind and all(r["match"] < results[0]["match"] for r in same_kind)
        matches = [r["match"] for r in results]
        assert matches == sorted(matches, reverse=True) and results[0]["match"] == results[0]["similarity"]


# scenes whose windows alone search a box that misses the item (IoU 0.30-0.39 in-process), outlined 0.75-0.83
@pytest.mark.parametrize("pid, seed", [("10109", 11), ("13036", 3), ("15926", 3)])
def test_a_shoppers_whole_photo_is_searched_on_the_item_the_gateway_outlines(gateway, pid, seed):
    """The same kind of scene uploaded whole, with no box, through the real TorchServe (its windows and its
    feature map) and gateway: the box the answer says was searched overlaps the pasted item by half or more,
    and the product comes first."""
    import numpy as np
    from PIL import Image

    from evaluation.scenes import box_iou, make_scene

    by_id = {p["id"]: p for p in PRODUCTS}
    clutter = [Image.open(DEMO_CSV.parent / PRODUCTS[i]["image_url"]) for i in (5, 50)]
    scene = make_scene(Image.open(DEMO_CSV.parent / by_id[pid]["image_url"]), 0, np.random.default_rng(seed), clutter)
    body = search(gateway, scene.jpeg, threshold="0", top_k="10").json()
    assert body["box"] is not None and box_iou(tuple(body["box"]), scene.box) >= 0.5, (body["box"], scene.box)
    assert body["results"][0]["id"] == pid, [(r["name"], r["match"]) for r in body["results"][:3]]


@pytest.fixture(scope="module")
def detailed_index(torchserve, tmp_path_factory):
    """The sample catalog indexed through the real TorchServe by the build CLI, with each product's keypoints."""
    out = tmp_path_factory.mktemp("e2e-details") / "index"
    assert build_cli(["--catalog", str(DEMO_CSV), "--output", str(out), "--torchserve-url", torchserve.url,
                      "--cache-dir", str(out.parent / "cache"), "--local-features", "--no-progress"]) == 0
    return out


def _cropped_scene(pid: str, seed: int):
    """A shopper-style scene of sample product ``pid`` (seeded, two fixed products lying around) and its item's
    box as the ``crop`` field."""
    import numpy as np
    from PIL import Image

    from evaluation.scenes import make_scene

    by_id = {p["id"]: p for p in PRODUCTS}
    clutter = [Image.open(DEMO_CSV.parent / PRODUCTS[i]["image_url"]) for i in (5, 50)]
    scene = make_scene(Image.open(DEMO_CSV.parent / by_id[pid]["image_url"]), 0, np.random.default_rng(seed), clutter)
    return scene, ",".join(f"{v:.4f}" for v in scene.box)


# cropped scenes whose product the CNN alone does not rank first (in-process: not in its top 10, or 3rd)
@pytest.mark.parametrize("pid, seed", [("21364", 11), ("17831", 3), ("15729", 7)])
def test_a_shoppers_cropped_photo_is_confirmed_by_its_details(start_gateway, detailed_index, gateway, torchserve,
                                                             pid, seed):
    """An index built with ``--local-features``, through the real TorchServe and gateway: the product the
    crop's details match comes first and is named ``confirmed``; the matches never increase down the list,
    and "Show more" from the answer's token continues the same order. The same crop on the index without
    keypoints (the ``gateway`` fixture) does not bring it first."""
    scene, crop = _cropped_scene(pid, seed)
    plain = search(gateway, scene.jpeg, crop=crop, threshold="0", top_k="10").json()
    assert plain["results"][0]["id"] != pid and plain["confirmed"] is None
    gw = start_gateway(INDEX_URI=str(detailed_index), TORCHSERVE_URL=torchserve.url)
    body = search(gw, scene.jpeg, crop=crop, threshold="0", top_k="10").json()
    results = body["results"]
    assert results[0]["id"] == pid and body["confirmed"] == pid, [(r["name"], r["match"]) for r in results[:3]]
    matches = [r["match"] for r in results]
    assert matches == sorted(matches, reverse=True)
    pages = [requests.post(f"{gw.url}/api/search", json={"query_token": body["query_token"], "threshold": 0,
                                                         "top_k": 5, "offset": at}, timeout=60).json()
             for at in (0, 5)]
    assert [r["id"] for page in pages for r in page["results"]] == [r["id"] for r in results]


# whole scenes (in-process): 14869's windows guide the outline to a lookalike (14842 came first), and where the
# photo looks like any product its details find it; 14468 is confirmed on a box that misses most of it (IoU 0.38)
# and its own outline covers it (0.65); 16084 and 21331 are first on outlines that miss half of them (IoU 0.44,
# 0.40) and their details place them (0.82, 0.93)
@pytest.mark.parametrize("pid, seed", [("14869", 7), ("14468", 3), ("16084", 7), ("21331", 7)])
def test_a_shoppers_whole_photo_is_outlined_where_it_looks_like_a_product_and_by_its_details(
        start_gateway, detailed_index, torchserve, pid, seed):
    """The index built ``--local-features`` (and, as every build, the catalog's prototypes), the real TorchServe
    and gateway, the photo uploaded whole: the product comes first and the box searched (outlined, then placed
    by the first product's details) overlaps the item by half or more."""
    from evaluation.scenes import box_iou

    scene, _ = _cropped_scene(pid, seed)
    gw = start_gateway(INDEX_URI=str(detailed_index), TORCHSERVE_URL=torchserve.url)
    body = search(gw, scene.jpeg, threshold="0", top_k="10").json()
    assert body["results"][0]["id"] == pid, [(r["name"], r["match"]) for r in body["results"][:3]]
    assert body["box"] is not None and box_iou(tuple(body["box"]), scene.box) >= 0.5, (body["box"], scene.box)


# cropped scenes whose product the CNN ranks 2nd / 8th and whose details are a little stronger than any other's,
# short of the confirmation rule's lead (in-process: 11 inliers against 6, 6 against 4)
@pytest.mark.parametrize("pid, seed", [("11052", 10), ("16940", 4)])
def test_a_shoppers_cropped_photo_is_lifted_by_its_details_without_the_badge(start_gateway, detailed_index, gateway,
                                                                            torchserve, pid, seed):
    """The same index and servers: a product whose details count for more than the CNN's small lead comes
    first, named by ``first_by_details`` but not ``confirmed``, and the page has no "Details match" badge."""
    scene, crop = _cropped_scene(pid, seed)
    plain = search(gateway, scene.jpeg, crop=crop, threshold="0", top_k="10").json()
    assert plain["results"][0]["id"] != pid and plain["first_by_details"] is None
    gw = start_gateway(INDEX_URI=str(detailed_index), TORCHSERVE_URL=torchserve.url)
    body = search(gw, scene.jpeg, crop=crop, threshold="0", top_k="10").json()
    assert body["results"][0]["id"] == pid and body["first_by_details"] == pid and body["confirmed"] is None
    matches = [r["match"] for r in body["results"]]
    assert matches == sorted(matches, reverse=True)
    page = requests.post(f"{gw.url}/search", files={"file": ("q.jpg", scene.jpeg, "image/jpeg")},
                         data={"crop": crop, "threshold": "0"}, timeout=60)
    assert page.status_code == 200 and "Details match" not in page.text and pid in page.text
