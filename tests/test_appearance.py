"""Appearance (ranking/appearance.py): the colour histogram, the fitted space, and the gateway ordering a
category by it, end to end through the search service."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from gateway import create_app
from gateway.config import Config
from gateway.images import QueryImage
from gateway.query_token import Query, QueryTokens
from gateway.service import SearchOptions, SearchService
from indexstore.store import APPEARANCE, APPEARANCE_VECTORS, IndexData, open_store, write_and_publish
from modelio.colour import (
    COARSE_SIZE,
    FINE_SIZE,
    FOREGROUND,
    GREY_BINS,
    HUE_BINS,
    MIN_CENTRE,
    MIN_FOREGROUND,
    SAT_BINS,
    SIDE,
    VAL_BINS,
    _hsv,
    _skin,
    centre_of,
    coarse_of,
)
from ranking.appearance import (
    DESCRIPTOR,
    HIST_SIZE,
    RERANK_DEPTH,
    Appearance,
    AppearanceSettings,
    colour_histogram,
    colour_histogram_or_none,
    fit_appearance,
    histogram_of,
)

RED, BLUE, GREEN = (200, 20, 20), (20, 40, 200), (30, 170, 40)


def photo(colour, size=(96, 96), background=(255, 255, 255)) -> Image.Image:
    """A product of ``colour`` in the middle of a plain background."""
    img = Image.new("RGB", size, background)
    img.paste(colour, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    return img


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def test_a_picture_only_the_model_reads_has_no_histogram():
    data = jpeg(photo(RED))
    assert np.array_equal(colour_histogram_or_none(data, 10_000_000), colour_histogram(data, 10_000_000))
    assert colour_histogram_or_none(b"not a picture", 10_000_000) is None


def test_the_histogram_describes_the_product_not_the_background():
    red_on_white, red_on_grey = histogram_of(photo(RED)), histogram_of(photo(RED, background=(128, 128, 128)))
    assert red_on_white.shape == (HIST_SIZE,) and red_on_white.sum() == pytest.approx(2.0)  # two histograms
    assert red_on_white[:FINE_SIZE].sum() == pytest.approx(1.0) and centre_of(red_on_white).sum() == pytest.approx(1.0)
    assert float(red_on_white @ red_on_grey) > 0.95 * float(red_on_white @ red_on_white)  # background ignored
    assert float(red_on_white @ histogram_of(photo(BLUE))) == 0.0  # different hue bins
    plain = histogram_of(Image.new("RGB", (64, 64), "white"))  # no foreground: the whole photo, all grey
    assert plain[-1] == pytest.approx(1.0)
    assert np.array_equal(colour_histogram(jpeg(photo(RED)), 10**7), colour_histogram(jpeg(photo(RED)), 10**7))


def labelled(n_per: int, colours=("red", "blue", "green")):
    rng = np.random.default_rng(0)
    hists, names = [], []
    for name, rgb in zip(colours, (RED, BLUE, GREEN), strict=False):
        for _ in range(n_per):
            jitter = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in rgb)
            hists.append(histogram_of(photo(jitter)))
            names.append(name)
    search = rng.normal(size=(len(names), 8)).astype(np.float32)
    return np.array(hists), search / np.linalg.norm(search, axis=1, keepdims=True), names


@pytest.mark.parametrize(("labelled_rows", "projected"), [(50, True), (49, False)])
def test_the_projection_needs_enough_colour_labels(labelled_rows, projected):
    hists, search, names = labelled(20)
    colours = [c if i < labelled_rows else "" for i, c in enumerate(names)]
    space, info = fit_appearance(hists, search, colours)
    assert (space.projection is not None) is projected and info["descriptor"] == DESCRIPTOR
    assert space.weight == (AppearanceSettings().weight if projected else AppearanceSettings().unsupervised_weight)


def test_one_colour_is_not_enough_for_a_projection():
    hists, search, _ = labelled(30)
    assert fit_appearance(hists, search, ["red"] * len(hists))[0].projection is None


def test_the_projection_puts_a_colour_next_to_its_own():
    hists, search, names = labelled(20)
    space, _ = fit_appearance(hists, search, names)
    vectors = space.vectors(hists, search)
    red = space.vectors(histogram_of(photo((210, 30, 25))), search[0])[0]
    best = np.argsort(-(vectors @ red))[:10]
    assert [names[i] for i in best] == ["red"] * 10


def test_the_space_round_trips_and_a_malformed_file_is_refused():
    hists, search, names = labelled(20)
    space, _ = fit_appearance(hists, search, names)
    again = Appearance.from_bytes(space.to_bytes())
    assert again.weight == pytest.approx(space.weight) and np.array_equal(again.projection, space.projection)
    assert again.colours == space.colours == ("blue", "green", "red")
    assert space.mean.dtype == again.mean.dtype == again.projection.dtype == np.float32  # the stored files' type
    assert Appearance.from_bytes(Appearance(0.3).to_bytes()).projection is None
    mean, projection = np.zeros(4, np.float32), np.zeros((4, 2), np.float32)
    older = Appearance(0.5, mean, projection)  # a file written before the colours were stored
    assert Appearance.from_bytes(older.to_bytes()).colours == ()
    assert Appearance.from_bytes(Appearance(0.5, mean, projection, ("a", "b")).to_bytes()).colours == ("a", "b")
    assert [Appearance.from_bytes(Appearance(w).to_bytes()).weight for w in (0.0, 1.0)] == [0.0, 1.0]  # both ends
    no_mean = io.BytesIO()
    np.savez(no_mean, weight=np.float32(0.5), projection=projection)  # a projection without its centring
    malformed, unnamed = "^malformed appearance file$", "^malformed appearance file: its colours do not name"
    for bad, message in ((b"junk", "^unreadable appearance file: "), (Appearance(1.5).to_bytes(), malformed),
                         (Appearance(1.0001).to_bytes(), malformed), (Appearance(-0.0001).to_bytes(), malformed),
                         (no_mean.getvalue(), malformed),
                         (Appearance(0.5, np.zeros(3, np.float32), projection).to_bytes(), malformed),
                         (Appearance(0.5, mean, projection, ("a",)).to_bytes(), unnamed),  # one name, two columns
                         (Appearance(0.5, mean, projection, ("a", "b", "c")).to_bytes(), unnamed)):
        with pytest.raises(ValueError, match=message):
            Appearance.from_bytes(bad)


def test_a_pickled_appearance_file_is_never_unpickled():
    """Its colour names as Python objects would run code from the store when loaded: refused, never loaded."""
    from tests.pickled import Payload

    evil = np.empty(2, dtype=object)
    evil[:] = [Payload(), Payload()]
    buf = io.BytesIO()
    np.savez(buf, weight=np.float32(0.5), mean=np.zeros(4, np.float32), projection=np.zeros((4, 2), np.float32),
             colours=evil)
    Payload.ran = 0
    with pytest.raises(ValueError, match="unreadable appearance file"):
        Appearance.from_bytes(buf.getvalue())
    assert Payload.ran == 0


def test_a_catalog_product_is_described_by_its_own_colour_where_the_projection_knows_it():
    hists, search, names = labelled(20)
    space, _ = fit_appearance(hists, search, names)
    colours = ["red", "purple", "", "blue"]  # purple: not one of the projection's colours
    rows = space.catalog_vectors(hists[:4], search[:4], colours)
    assert np.array_equal(rows[0], [0, 0, 1]) and np.array_equal(rows[3], [1, 0, 0])  # blue, green, red
    guessed = space.vectors(hists[:4], search[:4])
    assert np.allclose(rows[1:3], guessed[1:3], atol=1e-6)  # unknown or no colour: the guess from the photo
    assert np.allclose(space.catalog_vectors(hists[:2], search[:2], ["", ""]), guessed[:2], atol=1e-6)
    plain = Appearance(0.85)  # no projection (no colour column): the histogram, whatever a label says
    assert np.allclose(plain.catalog_vectors(hists[:2], search[:2], ["red", "blue"]),
                       plain.vectors(hists[:2], search[:2]), atol=1e-6)


# --------------------------------------------------------------------------- through the gateway


class FixedClient:
    backbone = "fixed-4d"
    vector = np.array([1, 0, 0, 0], np.float32)

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, blob: bytes):
        self.calls += 1
        return self.vector, self.backbone

    def probe(self) -> str:
        return self.backbone


def tops_index(tmp_path, appearance: bool = True, descriptor: str = DESCRIPTOR):
    """Three tops the CNN ranks green, blue, red (cosine 0.99, 0.98, 0.97), and a shoe."""
    cosines = [0.99, 0.98, 0.97]
    rows = [[c, np.sqrt(1 - c * c), 0, 0] for c in cosines] + [[0, 0, 0, 1]]
    products = [{"id": str(i), "name": name, "category": category}
                for i, (name, category) in enumerate([("green top", "Tops"), ("blue top", "Tops"),
                                                      ("red top", "Tops"), ("shoe", "Shoes")])]
    extra, manifest = {}, {"backbone": FixedClient.backbone}
    if appearance:
        space = Appearance(weight=0.85)
        hists = np.array([histogram_of(photo(c)) for c in (GREEN, BLUE, RED, RED)])
        buf = io.BytesIO()
        np.save(buf, space.vectors(hists, np.zeros((4, 4))).astype(np.float32))
        extra = {APPEARANCE: space.to_bytes(), APPEARANCE_VECTORS: buf.getvalue()}
        manifest["appearance"] = {"descriptor": descriptor, "weight": 0.85, "projection": None}
    write_and_publish(open_store(tmp_path / "index"), IndexData(np.array(rows, np.float32), products, manifest),
                      extra)
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"))
    svc = SearchService(config, FixedClient())
    svc.indexes.load()
    return svc


def shot(colour) -> QueryImage:
    """A query photo of one colour, decoded as the gateway decodes a query."""
    return QueryImage.decode(jpeg(photo(colour)), 10**7)


def names(found) -> list[str]:
    return [hit.product["name"] for hit in found.hits]


def test_inside_the_category_the_colour_breaks_ties_below_the_cnns_closest(tmp_path):
    svc = tops_index(tmp_path)
    red = svc.search_image(shot(RED), SearchOptions(threshold=0, top_k=4))
    # the CNN's closest keeps the top (an exact product is never pushed down by a colour); below it, colour
    assert red.guess.category == "Tops" and names(red)[:3] == ["green top", "red top", "blue top"]
    blue = svc.search_image(shot(BLUE), SearchOptions(threshold=0, top_k=4))
    assert names(blue)[:3] == ["green top", "blue top", "red top"]
    # the cosine and the similarity stay the CNN's; the match orders the list and never increases down it
    assert [round(h.score, 2) for h in red.hits[:3]] == [0.99, 0.97, 0.98]
    matches = [h.match for h in red.hits]
    assert matches == sorted(matches, reverse=True) and matches[0] == red.hits[0].similarity
    # below the first, the colour nearest the query's keeps its similarity, another colour only a share of it
    assert red.hits[1].match == red.hits[1].similarity and red.hits[2].match < red.hits[2].similarity
    alone = svc.search_image(shot(RED), SearchOptions(threshold=0, top_k=4, category_first=False))
    assert names(alone)[:3] == ["green top", "blue top", "red top"]  # similarity alone: the CNN's order
    assert [h.match for h in alone.hits] == [h.similarity for h in alone.hits]
    filtered = svc.search_image(shot(RED), SearchOptions(threshold=0, top_k=4, category="Tops", category_first=False))
    assert names(filtered)[:2] == ["green top", "red top"]  # one category (a filter): colour orders it too


@pytest.mark.parametrize(("appearance", "descriptor"), [(False, DESCRIPTOR), (True, "another-descriptor")])
def test_without_a_usable_appearance_the_cnn_orders(tmp_path, appearance, descriptor):
    svc = tops_index(tmp_path, appearance, descriptor)
    assert names(svc.search_image(shot(RED), SearchOptions(threshold=0, top_k=3))) == [
        "green top", "blue top", "red top"]


def test_more_like_this_orders_by_the_products_own_colour(tmp_path):
    svc = tops_index(tmp_path)
    assert names(svc.similar("3", SearchOptions(threshold=0, top_k=3, category_first=False))) == [
        "green top", "blue top", "red top"]  # the red shoe: other category, similarity alone
    found = svc.similar("0", SearchOptions(threshold=0, top_k=2))  # the green top: its category first
    assert names(found) == ["blue top", "red top"]


def test_a_refine_keeps_the_colour_order_without_the_photo(tmp_path):
    svc = tops_index(tmp_path)
    app = create_app(svc.config, client=svc.client)
    web = app.test_client()
    first = web.post("/api/search", data={"file": (io.BytesIO(jpeg(photo(RED))), "q.jpg"), "threshold": "0"})
    token = first.get_json()["query_token"]
    again = web.post("/api/search", json={"query_token": token, "threshold": 0, "top_k": 3}).get_json()
    assert [r["name"] for r in again["results"]] == ["green top", "red top", "blue top"]
    tokens = QueryTokens("k", 60)
    hist = histogram_of(photo(RED))
    assert np.array_equal(tokens.verify(tokens.issue(Query(np.ones(4, np.float32), "m", hist=hist))).hist, hist)


def test_appearance_files_that_do_not_match_the_index_are_refused(tmp_path):
    from gateway.index import _appearance
    from indexstore.store import CorruptIndex

    bad = IndexData(np.zeros((4, 4), np.float32), [{"id": str(i)} for i in range(4)],
                    {"version": "v", "appearance": {"descriptor": DESCRIPTOR}},
                    files={APPEARANCE: Appearance(0.5).to_bytes(), APPEARANCE_VECTORS: _npy(np.zeros((3, HIST_SIZE)))})
    with pytest.raises(CorruptIndex, match="do not match"):
        _appearance(bad, rows=4, search_dim=4, descriptor=DESCRIPTOR)
    junk = IndexData(bad.embeddings, bad.products, bad.manifest,
                     files={APPEARANCE: b"junk", APPEARANCE_VECTORS: bad.files[APPEARANCE_VECTORS]})
    with pytest.raises(CorruptIndex):
        _appearance(junk, rows=4, search_dim=4, descriptor=DESCRIPTOR)


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32))
    return buf.getvalue()


@pytest.mark.parametrize(("rgb", "bin_index"), [
    ((255, 0, 0), 0 * 9 + 2 * 3 + 2),  # red: hue 0, saturation 1, value 1
    ((0, 255, 0), 4 * 9 + 2 * 3 + 2),  # green: hue 1/3 → hue bin 4 of 12
    ((0, 0, 255), 8 * 9 + 2 * 3 + 2),  # blue: hue 2/3 → hue bin 8
    ((255, 255, 0), 2 * 9 + 2 * 3 + 2),  # yellow: hue 1/6 → bin 2
    ((255, 0, 255), 10 * 9 + 2 * 3 + 2),  # magenta: hue 5/6 → bin 10
    ((128, 64, 64), 0 * 9 + 1 * 3 + 1),  # dull red: saturation 0.5 → bin 1, value 0.5 → bin 1
    ((102, 51, 51), 0 * 9 + 1 * 3 + 0),  # value 0.4 → value bin 0
    ((0, 0, 0), 108 + 0),  # black: a grey, value 0
    ((128, 128, 128), 108 + 2),  # grey: saturation 0, value 0.5 → grey bin 2
    ((255, 255, 255), 108 + 3),  # white
    ((40, 10, 10), 108 + 0),  # very dark red counts as a grey (value ≤ 0.2)
    ((255, 230, 230), 108 + 3),  # a pale tint (saturation ≤ 0.2) counts as a grey
])
def test_a_plain_photo_falls_in_one_hand_computed_bin(rgb, bin_index):
    """A photo of one colour has no foreground, so it is described whole: every pixel in one bin."""
    hist = histogram_of(Image.new("RGB", (80, 80), rgb))
    assert coarse_of(hist)[0, bin_index] == pytest.approx(1.0), np.flatnonzero(hist)
    assert centre_of(hist)[0, bin_index] == pytest.approx(1.0)  # no centre without skin apart: the whole photo's


def test_the_foreground_threshold_on_both_sides():
    """A product differing from the border by just over the threshold is foreground; just under, it is not."""
    def background_share(delta: int) -> float:
        img = Image.new("RGB", (64, 64), (128, 128, 128))  # grey bin 2
        img.paste((128 - delta,) * 3, (8, 8, 56, 56))  # a darker grey product (bin 1), 2304 of 4096 pixels
        return float(coarse_of(histogram_of(img))[0, 108 + 2])

    assert background_share(int(FOREGROUND * 255) + 2) == 0.0  # over: only the product is described
    assert background_share(int(FOREGROUND * 255) - 2) == pytest.approx(1 - 2304 / 4096)  # under: the whole photo


def test_a_small_foreground_is_not_enough():
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((255, 0, 0), (30, 30, 33, 33))  # 9 of 4096 pixels: under MIN_FOREGROUND
    hist = histogram_of(img)
    assert coarse_of(hist)[0, 108 + 3] > 0.9 and centre_of(hist)[0, 108 + 3] > 0.9  # described whole: mostly white


def test_hsv_equals_the_standard_conversion():
    rng = np.random.default_rng(0)
    rgb = np.vstack([rng.random((300, 3)), np.eye(3), [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 1, 0],
                                                      [0, 1, 1], [1, 0, 1], [0.2, 0.9, 0.9]]]).astype(np.float32)
    hue, sat, val = _hsv(np.ascontiguousarray(rgb.T))  # colour planes: red, green, blue rows
    expected = np.array([colorsys.rgb_to_hsv(*px) for px in rgb.astype(np.float64)])
    assert np.allclose(sat, expected[:, 1], atol=1e-6) and np.allclose(val, expected[:, 2], atol=1e-6)
    circular = np.minimum(np.abs(hue - expected[:, 0]), 1 - np.abs(hue - expected[:, 0]))
    assert circular.max() < 1e-5
    grey = expected[:, 1] == 0
    assert grey.sum() == 3 and (hue[grey] == 0.0).all()  # black, white, mid grey: hue 0 as colorsys has it


def _histogram_as_first_written(img: Image.Image) -> np.ndarray:
    """The descriptor as indexes built before were described: pixel rows, ``np.add.at`` (slow, plain)."""
    x = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    fg = np.abs(x - np.median(border, axis=0)).max(axis=-1) > FOREGROUND
    rgb = x[fg] if fg.mean() >= MIN_FOREGROUND else x.reshape(-1, 3)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    top, spread = rgb.max(axis=1), rgb.max(axis=1) - rgb.min(axis=1)
    safe = np.where(spread > 1e-6, spread, 1.0)
    hue = np.where(r == top, (g - b) / safe, np.where(g == top, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(spread > 1e-6, (hue / 6.0) % 1.0, 0.0)
    sat, val = np.where(top > 1e-6, spread / np.where(top > 1e-6, top, 1.0), 0.0), top
    chroma = (sat > 0.2) & (val > 0.2)
    hist = np.zeros(COARSE_SIZE, np.float64)
    hi = np.minimum((hue * HUE_BINS).astype(int), HUE_BINS - 1)
    si = np.minimum(((sat - 0.2) / 0.8 * SAT_BINS).astype(int), SAT_BINS - 1)
    vi = np.minimum(((val - 0.2) / 0.8 * VAL_BINS).astype(int), VAL_BINS - 1)
    np.add.at(hist, (hi * SAT_BINS * VAL_BINS + si * VAL_BINS + vi)[chroma], 1)
    gi = np.minimum((val * GREY_BINS).astype(int), GREY_BINS - 1)
    np.add.at(hist, HUE_BINS * SAT_BINS * VAL_BINS + gi[~chroma], 1)
    return (hist / max(hist.sum(), 1)).astype(np.float32)


def test_the_coarse_histogram_is_the_one_indexes_were_first_built_with():
    """The whole foreground's coarse histogram (summed from the fine one) puts every pixel in the bin the first
    histogram did, for every image mode and for a photo with no clear background: without a colour column it is
    the appearance vector, as it was. One pixel in another bin moves two bins by 1/4096, far above the tolerance."""
    rng = np.random.default_rng(3)
    scenes = [photo(RED), photo(BLUE, background=(128, 128, 128)), Image.new("RGB", (64, 64), "white")]
    for _ in range(12):
        noise = Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))
        scenes += [noise, noise.convert("L"), noise.convert("RGBA"), noise.convert("P"), noise.rotate(20, expand=True)]
    for img in scenes:
        hist = histogram_of(img)
        assert hist.dtype == np.float32 and hist.shape == (HIST_SIZE,)
        assert np.allclose(coarse_of(hist)[0], _histogram_as_first_written(img), rtol=0, atol=1e-7), img.mode


def test_a_half_colour_half_grey_product_splits_its_histogram_evenly():
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((200, 20, 20), (8, 8, 32, 56))  # red left half of the product
    img.paste((60, 60, 60), (32, 8, 56, 56))  # dark grey right half
    hist = coarse_of(histogram_of(img))[0]
    assert hist.sum() == pytest.approx(1.0)
    grey = HUE_BINS * SAT_BINS * VAL_BINS + 0  # the darkest grey bin (value 60/255 < 1/4)
    assert hist[grey] == pytest.approx(0.5, abs=0.02) and hist.max() == pytest.approx(0.5, abs=0.02)


def test_the_fitted_projection_is_the_ridge_solution():
    rng = np.random.default_rng(1)
    hists = rng.random((60, HIST_SIZE)).astype(np.float32)
    vectors = rng.normal(size=(60, 5)).astype(np.float32)
    colours = ["red"] * 25 + ["blue"] * 25 + ["green"] * 2 + ["pink"] + [""] * 7
    space, info = fit_appearance(hists, vectors, colours, AppearanceSettings(ridge=2.0, min_labelled=52))
    rows = list(range(52))  # pink has one product: not a colour to learn; unlabelled rows neither

    def root(h: np.ndarray) -> np.ndarray:
        return np.sqrt(h) / np.linalg.norm(np.sqrt(h), axis=1, keepdims=True)

    fine = hists[rows, :FINE_SIZE]
    coarse = np.hstack([fine[:, :216].reshape(52, 12, 2, 9).sum(axis=2).reshape(52, 108),
                        fine[:, 216:].reshape(52, 4, 2).sum(axis=2)])
    x = np.hstack([root(coarse), root(fine), root(hists[rows, FINE_SIZE:]), vectors[rows]]).astype(np.float64)
    y = np.eye(3)[[{"blue": 0, "green": 1, "red": 2}[colours[i]] for i in rows]]
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    expected = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(x.shape[1]), xc.T @ yc)
    assert np.allclose(space.projection, expected, atol=1e-4) and np.allclose(space.mean, x.mean(axis=0), atol=1e-6)
    assert info == {"descriptor": DESCRIPTOR, "depth": RERANK_DEPTH, "weight": 0.85,
                    "projection": {"colours": 3, "fitted_on": 52, "ridge": 2.0},
                    "source": "ridge projection onto the catalog's colours"}
    too_few = fit_appearance(hists, vectors, colours, AppearanceSettings(min_labelled=53))[1]
    assert too_few == {"descriptor": DESCRIPTOR, "depth": RERANK_DEPTH, "weight": 0.85, "projection": None,
                       "source": "colour histogram: 52 products in 3 colours with 2+ products (a projection needs "
                                 "53 in 2)"}
    assert fit_appearance(hists, vectors, colours, AppearanceSettings(min_labelled=52, min_colours=3))[0].projection \
        is not None
    assert fit_appearance(hists, vectors, colours, AppearanceSettings(min_labelled=52, min_colours=4))[0].projection \
        is None


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_the_projection_summed_in_blocks_is_the_whole_least_squares_fit(block):
    """The ridge normal equations summed a block of rows at a time equal the one-matrix fit."""
    from ranking.appearance import _features, _ridge

    hists, search, names = labelled(6)
    named = sorted(set(names))
    rows = np.arange(len(names))
    labels = np.array([named.index(n) for n in names])
    mean, projection = _ridge(hists, search, rows, labels, len(named), ridge=1.0, block=block)
    x = _features(hists, search).astype(np.float64)
    centred = x - x.mean(axis=0)
    targets = np.eye(len(named))[labels]
    expected = np.linalg.solve(centred.T @ centred + np.eye(x.shape[1]), centred.T @ (targets - targets.mean(axis=0)))
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(projection, expected, rtol=1e-6, atol=1e-9)


def _descriptor_pixel_by_pixel(img: Image.Image) -> np.ndarray:
    """The descriptor written plainly, one pixel at a time with ``colorsys``: the fine histogram of the
    foreground, then the coarse one of the centre's foreground without skin (the foreground's when too few)."""
    x = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    fg = np.abs(x - np.median(border, axis=0)).max(axis=-1) > FOREGROUND
    fg = fg if fg.mean() >= MIN_FOREGROUND else np.ones_like(fg)

    def bin_of(px: np.ndarray, hues: int, greys: int) -> int:
        hue, sat, val = colorsys.rgb_to_hsv(*px.astype(np.float64))
        r, g, b = px * 255
        if sat > 0.2 and val > 0.2:
            return (min(int(hue * hues), hues - 1) * 9 + min(int((sat - 0.2) / 0.8 * 3), 2) * 3
                    + min(int((val - 0.2) / 0.8 * 3), 2))
        return hues * 9 + min(int(val * greys), greys - 1)

    def skin(px: np.ndarray) -> bool:
        r, g, b = px * 255
        return r > 95 and g > 40 and b > 20 and abs(r - g) > 15 and r > g and r > b

    fine, centre = np.zeros(FINE_SIZE), np.zeros(COARSE_SIZE)
    worn = [(i, j) for i in range(16, 48) for j in range(16, 48) if fg[i, j] and not skin(x[i, j])]
    for i, j in zip(*np.nonzero(fg), strict=True):
        fine[bin_of(x[i, j], 24, 8)] += 1
    for i, j in worn if len(worn) >= MIN_CENTRE else zip(*np.nonzero(fg), strict=True):
        centre[bin_of(x[i, j], 12, 4)] += 1
    return np.concatenate([fine / fine.sum(), centre / centre.sum()])


def test_the_descriptor_is_its_plain_definition():
    """Every pixel in the bins the plain definition gives, for a product on a background, person-like scenes,
    a photo with no clear background, and noise of colours off every bin edge (every hue, greys, skin tones:
    8-bit colours often fall exactly on an edge, where float32 and float64 may round apart)."""
    rng = np.random.default_rng(5)
    scenes = [photo(RED), photo(BLUE, background=(128, 128, 128)), Image.new("RGB", (64, 64), "white"), _worn(),
              _worn(300)]
    palette = _off_edge_colours(rng, 60)
    scenes += [Image.fromarray(palette[rng.integers(0, len(palette), (64, 64))]) for _ in range(4)]
    for img in scenes:
        assert np.allclose(histogram_of(img), _descriptor_pixel_by_pixel(img), rtol=0, atol=1e-6)


def _off_edge_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` 8-bit colours whose hue, saturation and value are each at least 0.01 of a bin from any bin edge."""
    out: list[np.ndarray] = []
    while len(out) < n:
        px = rng.integers(0, 256, 3).astype(np.uint8)
        hue, sat, val = colorsys.rgb_to_hsv(*(px / 255))
        marks = [hue * 24, (sat - 0.2) / 0.8 * 3, (val - 0.2) / 0.8 * 3, val * 8, sat / 0.2, val / 0.2]
        if all(abs(m - round(m)) > 0.01 for m in marks):
            out.append(px)
    return np.array(out)


def _worn(blue_pixels: int = 32 * 32) -> Image.Image:
    """A person-like photo on white: skin over the whole centre, ``blue_pixels`` of it a blue garment, and a
    red bag outside the centre."""
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((224, 172, 140), (16, 16, 48, 48))  # skin
    garment = np.array(img)
    rows, cols = np.divmod(np.arange(blue_pixels), 32)
    garment[16 + rows, 16 + cols] = BLUE
    img = Image.fromarray(garment)
    img.paste(RED, (2, 52, 14, 62))  # the bag, outside the middle half
    return img


def test_the_centre_describes_what_is_worn_not_the_wearer_or_the_bag():
    hist = histogram_of(_worn(32 * 16))  # half the centre blue, half skin
    centre, fine = centre_of(hist)[0], hist[:FINE_SIZE]
    blue = 7 * 9 + 2 * 3 + 2  # hue 0.648 → 7.8 of 12, saturation 0.9 → 2.6 of 3, value 0.78 → 2.2 of 3
    assert centre[blue] == pytest.approx(1.0)  # only the garment
    assert fine[np.flatnonzero(fine)].size >= 3  # the whole foreground: skin, garment and bag
    assert coarse_of(hist)[0, blue] == pytest.approx(512 / (1024 + 120), abs=0.01)


@pytest.mark.parametrize(("garment", "alone"), [(MIN_CENTRE, True), (MIN_CENTRE - 1, False)])
def test_too_few_worn_pixels_describe_the_centre_by_the_whole_foreground(garment, alone):
    """At ``MIN_CENTRE`` pixels the centre is the garment's; one fewer, it is the whole foreground's."""
    hist = histogram_of(_worn(garment))
    centre = centre_of(hist)[0]
    assert bool(centre.max() == pytest.approx(1.0)) is alone
    if not alone:
        assert np.allclose(centre, coarse_of(hist)[0], atol=1e-6)


@pytest.mark.parametrize(("rgb", "skin"), [
    ((200, 150, 120), True),
    ((95, 60, 40), False), ((96, 60, 40), True),  # red at 95 and just over (8-bit values stay exact: x·255)
    ((150, 40, 30), False), ((150, 41, 30), True),  # green at 40, just over
    ((150, 100, 20), False), ((150, 100, 21), True),  # blue at 20, just over
    ((150, 135, 100), False), ((150, 134, 100), True),  # red and green 15 apart, 16
    ((120, 140, 60), False),  # green over red
    ((120, 60, 130), False),  # blue over red
    ((120, 60, 120), False),  # blue as red: not over it
])
def test_the_skin_rule_on_both_sides_of_each_limit(rgb, skin):
    planes = np.array(rgb, np.float32).reshape(3, 1) / 255
    assert bool(_skin(planes)[0]) is skin


def test_the_fine_histogram_splits_each_coarse_hue_and_grey_in_two():
    """Two hues of one coarse bin (either side of 1/24) and two greys of one (either side of 1/8) are told apart
    by the fine histogram and summed again by ``coarse_of``."""
    for left, right, coarse in (((255, 20, 0), (255, 80, 0), 0 * 9 + 2 * 3 + 2),  # hue 0.013 and 0.052
                                ((20, 20, 20), (40, 40, 40), 108)):  # value 0.08 and 0.16, either side of 1/8
        img = Image.new("RGB", (64, 64), left)
        img.paste(right, (0, 0, 64, 32))
        hist = histogram_of(img)
        assert np.count_nonzero(hist[:FINE_SIZE]) == 2 and coarse_of(hist)[0, coarse] == pytest.approx(1.0)


def test_a_projected_appearance_vector_is_its_definition():
    """unit((features − mean) · projection), the features being the unit √ of the foreground's coarse histogram,
    of its fine one and of the centre's, then the search vector, in that order."""
    rng = np.random.default_rng(9)
    hists = np.hstack([rng.random((3, FINE_SIZE)), rng.random((3, COARSE_SIZE))]).astype(np.float32)
    search = rng.normal(size=(3, 5)).astype(np.float32)
    width = 2 * COARSE_SIZE + FINE_SIZE + 5
    mean, projection = rng.normal(size=width).astype(np.float32), rng.normal(size=(width, 4)).astype(np.float32)

    def root(h: np.ndarray) -> np.ndarray:
        return np.sqrt(h) / np.linalg.norm(np.sqrt(h), axis=1, keepdims=True)

    fine = hists[:, :FINE_SIZE].astype(np.float64)
    coarse = np.hstack([fine[:, :216].reshape(3, 12, 2, 9).sum(axis=2).reshape(3, 108),
                        fine[:, 216:].reshape(3, 4, 2).sum(axis=2)])
    features = np.hstack([root(coarse), root(fine), root(hists[:, FINE_SIZE:].astype(np.float64)), search])
    raw = (features - mean) @ projection
    got = Appearance(0.5, mean, projection).vectors(hists, search)
    assert got.dtype == np.float32
    assert np.allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(Appearance(0.5).vectors(hists, search), root(coarse), atol=1e-6)  # no projection
