"""gateway/outline.py: the item's outline from the feature map's cosines to the product found."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gateway.images import Crop
from gateway.outline import OutlineSettings, agreed, heat, likeness, outline
from gateway.service import SearchOptions, SearchQuery
from tests.conftest import demo_image


def grid(rows: int, cols: int, hot: dict[tuple[int, int], float], base: float = 0.0) -> np.ndarray:
    cos = np.full((rows, cols), base, dtype=np.float32)
    for cell, value in hot.items():
        cos[cell] = value
    return cos


CELLS = OutlineSettings(level=0.6, refine=1)  # cell by cell


def test_the_outline_is_the_hot_block_around_the_best_cell_in_fractions_of_the_photo():
    cos = grid(6, 8, {(r, c): 0.9 for r in range(1, 4) for c in range(2, 5)})
    cos[2, 3] = 1.0
    assert outline(cos, CELLS) == Crop(2 / 8, 1 / 6, 5 / 8, 4 / 6)


def test_interpolated_the_edges_fall_between_cell_centres():
    """A block of three hot cells (1.0) among cold ones (0.0), level 0.5, four points a cell: the value at a
    point a quarter-cell past a hot centre toward a cold one is 0.75 (in), at three quarters 0.25 (out): the
    edge is half a cell past the hot centres, where the block's cells end, and not a whole cell out."""
    cos = grid(5, 7, {(r, c): 1.0 for r in range(1, 4) for c in range(2, 5)})
    assert outline(cos, OutlineSettings(level=0.5, refine=4)) == Crop(2 / 7, 1 / 5, 5 / 7, 4 / 5)
    # a lower level reaches further into the cold cells, a higher one stays inside the hot ones
    assert outline(cos, OutlineSettings(level=0.2, refine=4)) == Crop(7 / 28, 3 / 20, 21 / 28, 17 / 20)
    assert outline(cos, OutlineSettings(level=0.8, refine=4)) == Crop(9 / 28, 5 / 20, 19 / 28, 15 / 20)


def test_a_cell_is_the_items_from_the_level_on_and_not_below_it():
    # lowest 0, highest 1: at level 0.6 a cell of 0.6 is in, one just below is out
    cos = grid(4, 6, {(1, 1): 1.0, (1, 2): 0.6, (2, 1): 0.6, (2, 2): 0.6, (1, 3): np.float32(0.6) - 1e-6})
    assert outline(cos, OutlineSettings(level=0.6, refine=1)) == Crop(1 / 6, 1 / 4, 3 / 6, 3 / 4)
    assert outline(cos, OutlineSettings(level=0.59, refine=1)) == Crop(1 / 6, 1 / 4, 4 / 6, 3 / 4)


def test_only_the_region_of_the_best_cell_counts_and_corners_do_not_join():
    cos = grid(6, 6, {(0, 0): 1.0, (0, 1): 0.9, (1, 0): 0.9, (1, 1): 0.9,  # the item, top left
                      (4, 4): 0.95, (4, 5): 0.95, (5, 4): 0.95, (5, 5): 0.95,  # a lookalike elsewhere
                      (2, 2): 0.9})  # touches the item only at a corner
    assert outline(cos, CELLS) == Crop(0, 0, 2 / 6, 2 / 6)


@pytest.mark.parametrize("least, expected", [(2, Crop(1 / 5, 1 / 5, 3 / 5, 3 / 5)), (3, None)])
def test_an_outline_under_the_least_cells_either_way_is_none(least, expected):
    cos = grid(5, 5, {(1, 1): 1.0, (1, 2): 0.9, (2, 1): 0.9, (2, 2): 0.9})
    assert outline(cos, OutlineSettings(least_cells=least, refine=1)) == expected
    line = grid(5, 5, {(2, c): 1.0 for c in range(5)})  # five cells wide, one high
    assert outline(line, CELLS) is None
    assert outline(line, OutlineSettings(refine=4)) is None  # interpolated, still under two cells high


@pytest.mark.parametrize("cos", [np.zeros((4, 4), np.float32), np.full((4, 4), np.nan, np.float32),
                                 grid(4, 4, {(1, 1): np.inf})])
def test_a_flat_or_broken_map_has_no_outline(cos):
    assert outline(cos) is None


def test_heat_is_each_cells_cosine_to_the_product_in_the_search_space():
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(8, 3, 4)).astype(np.float32)
    product = rng.normal(size=8).astype(np.float32)
    product /= np.linalg.norm(product)
    got = heat(fmap, lambda cells: cells, product)
    cell = fmap[:, 2, 1]
    assert got.shape == (3, 4)
    assert got[2, 1] == pytest.approx(float(cell @ product / np.linalg.norm(cell)), abs=1e-5)
    # through a projection (the index's whitening): the cells are taken into its space first
    projection = rng.normal(size=(8, 5)).astype(np.float32)
    target = rng.normal(size=5).astype(np.float32)
    target /= np.linalg.norm(target)
    whitened = heat(fmap, lambda cells: cells @ projection, target)
    moved = cell @ projection
    assert whitened[2, 1] == pytest.approx(float(moved @ target / np.linalg.norm(moved)), abs=1e-5)


def busy_scene(pid: str, seed: int) -> tuple[bytes, tuple[float, float, float, float]]:
    from evaluation.scenes import make_scene

    scene = make_scene(Image.open(io.BytesIO(demo_image(pid))), 0, np.random.default_rng(seed))
    return scene.jpeg, scene.box


@pytest.mark.parametrize("pid, seed", [("10109", 11), ("10229", 3), ("11837", 3)])
def test_a_whole_photo_gets_a_box_on_the_item_from_its_feature_map(client, stub, pid, seed):
    """One item on a busy background, no box drawn: the box the gateway searched overlaps the pasted item by
    half or more (IoU), and the product is found; the feature map is asked for once."""
    from evaluation.scenes import box_iou

    photo, truth = busy_scene(pid, seed)
    stub.maps = 0
    body = client.post("/api/search", data={"file": (io.BytesIO(photo), "q.jpg"), "threshold": "0"}).get_json()
    assert body["box"] is not None and box_iou(tuple(body["box"]), truth) >= 0.5
    assert body["results"][0]["id"] == pid and stub.maps == 1


@pytest.mark.parametrize("failure, said", [
    ("refused", "not an image"),  # an archive from before feature maps answers 400
    ("down", "embedding service unreachable"),
    ("backend", "milvus is gone"),  # the product's vector cannot be read (a Milvus replica mid-swap)
    ("down after the map", "embedding service timed out"),  # the outlined boxes cannot be embedded
])
def test_without_an_outline_the_windows_box_stands(small_index, stub, tmp_path, caplog, monkeypatch, failure, said):
    """The outline is a refinement: when it cannot be made the located search is the answer, and the log
    says why."""
    import gateway.service as service_module
    from gateway.config import Config
    from gateway.service import SearchService
    from modelio.imaging import ImageError
    from modelserver.client import ModelServerError
    from search import SearchUnavailable

    class Server:
        mapped = False

        def embed(self, blob: bytes):
            if self.mapped and failure == "down after the map":
                raise ModelServerError("embedding service timed out after 30s")
            return stub.embed(blob)

        def probe(self) -> str:
            return stub.probe()

        def feature_map(self, blob: bytes, side: int):
            self.mapped = True
            if failure == "refused":
                raise ImageError("not an image")
            if failure == "down":
                raise ModelServerError("embedding service unreachable at http://127.0.0.1:1")
            return stub.feature_map(blob, side)

    def broken(index, fmap, row):
        raise SearchUnavailable("milvus is gone")

    if failure == "backend":
        monkeypatch.setattr(service_module, "_item_heat", broken)
    photo, truth = busy_scene("10109", 11)
    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")),
                        Server())
    svc.indexes.load()
    with caplog.at_level("WARNING"):
        found = svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found
    assert found.box is not None and found.hits  # the windows' box
    assert f"no outline of the item: {said}" in caplog.text


def test_the_item_is_outlined_against_the_products_model_vector_or_else_in_the_search_space():
    """A replica holding the matrix compares each cell with the product's stored model vector; one on the ANN
    file or Milvus (no matrix) compares them in the search space, through the index's whitening."""
    from types import SimpleNamespace

    from gateway.service import _item_heat

    fmap = np.zeros((3, 1, 2), np.float32)
    fmap[:, 0, 0], fmap[:, 0, 1] = (1, 0, 0), (0, 1, 0)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)  # a "whitening" that swaps two channels
    backend = SimpleNamespace(vector=lambda row: np.array([1, 0, 0], np.float32))
    holding = SimpleNamespace(model_vector=lambda row: np.array([2, 0, 0], np.float32),  # not unit: made so
                              prepare=lambda cells: cells @ swap, view=SimpleNamespace(backend=backend))
    assert _item_heat(holding, fmap, 0).tolist() == [[1.0, 0.0]]
    without = SimpleNamespace(model_vector=lambda row: None, prepare=lambda cells: cells @ swap,
                              view=SimpleNamespace(backend=backend))
    assert _item_heat(without, fmap, 0).tolist() == [[0.0, 1.0]]


def test_the_region_grows_one_cell_each_way_up_to_the_photos_edges():
    """The best cell at the block's bottom right, the block in the photo's top left corner: the region reaches
    the top row and the left column one step at a time."""
    cos = grid(4, 5, {(0, 0): 0.9, (0, 1): 0.9, (1, 0): 0.9, (1, 1): 1.0})
    assert outline(cos, CELLS) == Crop(0, 0, 2 / 5, 2 / 4)
    bottom_right = grid(4, 5, {(2, 3): 1.0, (2, 4): 0.9, (3, 3): 0.9, (3, 4): 0.9})  # best cell top left
    assert outline(bottom_right, CELLS) == Crop(3 / 5, 2 / 4, 1, 1)


def test_interpolated_at_two_points_a_cell_and_at_the_photos_edges():
    # two points a cell, level 0.2: the points three quarters of a cell from a hot centre are 0.25, in (cell by
    # cell the box would end at the hot cells)
    cos = grid(3, 6, {(r, c): 1.0 for r in range(3) for c in (2, 3)})
    assert outline(cos, OutlineSettings(level=0.2, refine=2)) == Crop(3 / 12, 0, 9 / 12, 1)
    assert outline(cos, OutlineSettings(level=0.2, refine=1)) == Crop(2 / 6, 0, 4 / 6, 1)
    # a block at the photo's left and top edges keeps its edge there: beyond the outer centres, the edge's value
    # (not the far side's: the map does not wrap around); inside, 0.875 is in and 0.625 out at level 0.7
    corner = grid(4, 6, {(r, c): 1.0 for r in range(2) for c in range(2)})
    assert outline(corner, OutlineSettings(level=0.7, refine=4, least_cells=1)) == Crop(0, 0, 7 / 24, 7 / 16)
    # the least size counts interpolated points: 8 of them are two cells (a box), 7 are not
    assert outline(corner, OutlineSettings(level=0.5, refine=4)) == Crop(0, 0, 8 / 24, 8 / 16)
    assert outline(corner, OutlineSettings(level=0.7, refine=4)) is None


def test_heat_normalises_small_cells_and_is_float32_whatever_the_space_gives():
    fmap = np.zeros((2, 1, 2), np.float32)
    fmap[:, 0, 0], fmap[:, 0, 1] = (0.03, 0.04), (0.0, 0.5)  # norms 0.05 and 0.5: under one
    product = np.array([0.6, 0.8], np.float64)
    got = heat(fmap, lambda cells: cells.astype(np.float64), product)
    assert got.dtype == np.float32 and got[0].tolist() == pytest.approx([1.0, 0.8], abs=1e-6)


def test_more_limits_of_an_outline():
    # a block of infinite cosines is a broken map, not an outline
    assert outline(grid(5, 5, {(r, c): np.inf for r in range(1, 4) for c in range(1, 4)}), CELLS) is None
    # the level is a share of the way from the lowest cosine (here 0.5), not from zero: 0.8 is the limit
    raised = grid(4, 6, {(1, 1): 1.0, (1, 2): 0.8, (2, 1): 0.8, (2, 2): 0.8, (1, 3): 0.79}, base=0.5)
    assert outline(raised, CELLS) == Crop(1 / 6, 1 / 4, 3 / 6, 3 / 4)
    # a column one cell wide is no outline however tall; neither is one hot cell alone
    assert outline(grid(5, 5, {(r, 2): 1.0 for r in range(5)}), CELLS) is None
    assert outline(grid(4, 4, {(1, 1): 1.0}), CELLS) is None


@pytest.mark.parametrize("slack", [None, 1000.0])
def test_an_outline_the_catalog_sees_less_well_than_the_windows_box_is_not_searched(small_index, stub, tmp_path,
                                                                                      monkeypatch, slack):
    """The outlined box is kept only where its closest product is about as close as the search it would
    replace (a studio photo of another product is searched best as it is): here the crop after the map
    embeds as a blank picture, and the answer is the windows' own, box and all; unless the slack is that wide."""
    from dataclasses import replace

    import gateway.service as service_module
    from gateway.config import Config
    from gateway.service import SearchService
    from tests.conftest import jpeg_bytes

    class Server:
        def __init__(self, maps: bool) -> None:
            self.mapped = False
            self.maps = maps

        def embed(self, blob: bytes):
            return stub.embed(jpeg_bytes((128, 128, 128)) if self.mapped else blob)

        def probe(self) -> str:
            return stub.probe()

        def __getattr__(self, name):
            if name != "feature_map" or not self.maps:
                raise AttributeError(name)

            def feature_map(blob: bytes, side: int):
                self.mapped = True
                return stub.feature_map(blob, side)
            return feature_map

    if slack is not None:
        monkeypatch.setattr(service_module, "OUTLINE", replace(service_module.OUTLINE, slack=slack))
    photo, _ = busy_scene("10109", 11)
    answers = []
    for maps in (False, True):
        svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0,
                                   index_cache_dir=str(tmp_path / f"c{maps}")), Server(maps))
        svc.indexes.load()
        found = svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found
        answers.append((found.box, [hit.product["id"] for hit in found.hits]))
    assert answers[0][0] is not None and (answers[1] == answers[0]) == (slack is None)


def test_a_box_replaces_the_search_down_to_the_slack_and_not_below_it():
    settings = OutlineSettings(slack=2.0)
    assert settings.keeps(50.0, 48.0) and settings.keeps(50.0, 61.0)
    assert not settings.keeps(50.0, 47.99)
    assert OutlineSettings(slack=0.0).keeps(50.0, 50.0) and not OutlineSettings(slack=0.0).keeps(50.0, 49.99)


@pytest.mark.parametrize("seed", [3, 11])
def test_each_close_product_outlines_the_item_and_the_box_seen_best_is_searched(small_index, stub, tmp_path,
                                                                                 monkeypatch, seed):
    """The found product may be a lookalike, whose map lights another place: here the closest product's heat is
    made to light the photo's top left corner. With one guide that corner is all there is (and the windows' box,
    which misses the item, stands); with five, the next closest products outline the item itself."""
    from dataclasses import replace

    import gateway.service as service_module
    from evaluation.scenes import box_iou
    from gateway.config import Config
    from gateway.service import SearchService

    real, guided = service_module._item_heat, []

    def misled(index, fmap, row):
        guided.append(row)
        if len(guided) > 1:
            return real(index, fmap, row)
        corner = np.zeros(fmap.shape[1:], np.float32)
        corner[:3, :3] = 1.0
        return corner

    photo, truth = busy_scene("11837", seed)
    found = {}
    boxes = service_module._outline_boxes  # the guides alone: the windows' products outline in the test below
    monkeypatch.setattr(service_module, "_outline_boxes", lambda index, fmap, rows, seen: boxes(index, fmap, rows, {}))
    for guides in (1, 5):
        monkeypatch.setattr(service_module, "OUTLINE", replace(service_module.OUTLINE, guides=guides))
        monkeypatch.setattr(service_module, "_item_heat", misled)
        guided.clear()
        svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0,
                                   index_cache_dir=str(tmp_path / f"c{guides}")), stub)
        svc.indexes.load()
        svc.require_index().prototypes = None  # the guides alone (the any-product outline: the next test)
        found[guides] = svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found
        assert len(guided) == guides and len(set(guided)) == guides  # each guide once, one map
    assert box_iou(found[5].box.fractions(), truth) >= 0.5 and found[5].hits[0].product["id"] == "11837"
    assert box_iou(found[1].box.fractions(), truth) < 0.5 and found[1].box.fractions()[:2] != (0.0, 0.0)


def corner(fmap: np.ndarray) -> np.ndarray:
    """A misled product's heat: the photo's top left corner lit, nothing else."""
    cos = np.zeros(fmap.shape[1:], np.float32)
    cos[:3, :3] = 1.0
    return cos


def one_guide_search(small_index, stub, tmp_path, monkeypatch, heat, seed: int, prototypes: bool):
    """A busy scene searched whole with one guide and ``heat`` as every product's heat; the version's prototypes
    kept or dropped. The answer and the pasted item's box."""
    from dataclasses import replace

    import gateway.service as service_module
    from gateway.config import Config
    from gateway.service import SearchService

    monkeypatch.setattr(service_module, "OUTLINE", replace(service_module.OUTLINE, guides=1))
    monkeypatch.setattr(service_module, "_item_heat", heat)
    photo, truth = busy_scene("11837", seed)
    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")),
                        stub)
    svc.indexes.load()
    assert svc.require_index().prototypes is not None  # the build fitted them
    if not prototypes:
        svc.require_index().prototypes = None
    return svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found, truth


@pytest.mark.parametrize("seed", [3, 11])
def test_where_the_photo_looks_like_any_product_outlines_the_item_when_the_guides_mislead(small_index, stub, tmp_path,
                                                                                          monkeypatch, seed):
    """The same misled closest product and one guide: the version's prototypes outline the item without knowing
    which product it is, and that box, seen better than the corner, is searched; without them the corner's
    search loses to the windows' box, which misses the item (the test above)."""
    from evaluation.scenes import box_iou

    found, truth = one_guide_search(small_index, stub, tmp_path, monkeypatch, lambda index, fmap, row: corner(fmap),
                                    seed, prototypes=True)
    assert box_iou(found.box.fractions(), truth) >= 0.5 and found.hits[0].product["id"] == "11837"


@pytest.mark.parametrize("seed", [3, 11])
def test_where_the_products_the_windows_found_agree_outlines_the_item_when_the_guide_misleads(
        small_index, stub, tmp_path, monkeypatch, seed):
    """The misled closest product as the only guide, no prototypes: the products the windows found each outline
    the photo too, their agreed box holds the item and is searched; without it the windows' box stands (above)."""
    import gateway.service as service_module
    from evaluation.scenes import box_iou

    real, calls = service_module._item_heat, []

    def misled(index, fmap, row):
        calls.append(row)
        return real(index, fmap, row) if len(calls) > 1 else corner(fmap)

    found, truth = one_guide_search(small_index, stub, tmp_path, monkeypatch, misled, seed, prototypes=False)
    assert len(calls) > 1  # the windows' products were outlined on the same map
    assert box_iou(found.box.fractions(), truth) >= 0.5 and found.hits[0].product["id"] == "11837"


def test_the_agreed_box_of_the_windows_products_is_added_to_the_guides_boxes_once(small_index, tmp_path, monkeypatch):
    import gateway.service as service_module
    from gateway.config import Config
    from gateway.service import SearchService, _outline_boxes

    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")), None)
    svc.indexes.load()
    index = svc.require_index()
    index.prototypes = None
    places = {0: (slice(1, 4), slice(1, 4)), 1: (slice(5, 8), slice(4, 7)), 2: (slice(1, 4), slice(1, 4))}

    def heat_of(index, fmap, row):
        cos = np.zeros(fmap.shape[1:], np.float32)
        cos[places[row]] = 1.0
        return cos

    monkeypatch.setattr(service_module, "_item_heat", heat_of)
    fmap = np.zeros((index.model_dim, 9, 8), np.float32)
    guide = outline(heat_of(index, fmap, 0), service_module.OUTLINE)
    other = outline(heat_of(index, fmap, 1), service_module.OUTLINE)
    assert guide is not None and other is not None and guide != other
    assert _outline_boxes(index, fmap, [0], {}) == ([guide], None)
    assert _outline_boxes(index, fmap, [0], {1: 80.0, 2: 65.0}) == ([guide, other], None)  # 20 against 5
    assert _outline_boxes(index, fmap, [0], {1: 70.0, 2: 75.0}) == ([guide], None)  # the guide's box: not twice
    assert _outline_boxes(index, None, [0], {1: 80.0}) == ([], None)  # no map, no outline


def box(left: float, top: float, right: float, bottom: float) -> Crop:
    return Crop(left, top, right, bottom)


def test_the_agreed_outline_is_where_most_products_outline_alike_not_the_closest_ones():
    lone, item = box(0.0, 0.0, 0.2, 0.2), box(0.4, 0.3, 0.8, 0.9)
    close_to_item = box(0.41, 0.31, 0.8, 0.9)
    # the lone outline's product is closest (80: 20 above the base); the item's three weigh 10 + 8 + 6 = 24
    outlines = [(80.0, lone), (70.0, item), (68.0, close_to_item), (66.0, item)]
    assert agreed(outlines) == item  # of the three equals by support, the closer product's
    assert agreed([(80.0, lone), (70.0, item), (66.0, close_to_item)]) == lone  # 20 against 10 + 6 = 16
    # a tie of support (10 and 6 + 4): the closer product's, wherever it stands in the list
    assert agreed([(66.0, item), (64.0, close_to_item), (70.0, lone)]) == lone
    assert agreed([]) is None
    assert agreed([(50.0, item)]) == item  # one outline, even under the base


def test_the_agreed_outlines_limits_overlap_and_base_on_both_sides():
    from gateway.locate import iou

    lone, item, near = box(0.0, 0.0, 0.2, 0.2), box(0.4, 0.3, 0.8, 0.9), box(0.4, 0.3, 0.8, 0.75)
    overlap = iou(item, near)  # 0.75
    outlines = [(75.0, lone), (70.0, item), (66.0, near)]  # 15 against 10 + 6 when the two agree
    assert agreed(outlines, OutlineSettings(agree_overlap=overlap)) == item
    assert agreed(outlines, OutlineSettings(agree_overlap=float(np.nextafter(overlap, 1.0)))) == lone
    # the base: at 59 the lone one weighs 16 against 11 + 7 = 18; at 61.5, 13.5 against 8.5 + 4.5 = 13
    assert agreed(outlines, OutlineSettings(agree_overlap=overlap, agree_base=59.0)) == item
    assert agreed(outlines, OutlineSettings(agree_overlap=overlap, agree_base=61.5)) == lone
    # an outline under the base takes weight away from those it agrees with
    assert agreed([(75.0, lone), (76.0, item), (50.0, near)], OutlineSettings(agree_overlap=overlap)) == lone


def _flood(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """A plain 4-connected flood fill: the reference ``_region`` is checked against."""
    region = np.zeros_like(mask, dtype=bool)
    region[seed] = True
    stack = [seed]
    while stack:
        row, col = stack.pop()
        for r, c in ((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)):
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and not region[r, c]:
                region[r, c] = True
                stack.append((r, c))
    return region


def test_the_region_is_the_4_connected_flood_fill_from_the_seed_on_random_masks():
    from gateway.outline import _region

    rng = np.random.default_rng(7)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            continue
        pick = int(rng.integers(len(rows)))
        seed = (int(rows[pick]), int(cols[pick]))
        assert np.array_equal(_region(mask, seed), _flood(mask, seed))
    diagonal = np.eye(3, dtype=bool)  # corners do not join
    assert _region(diagonal, (1, 1)).sum() == 1


def test_likeness_is_each_cells_best_cosine_to_any_prototype():
    prototypes = np.eye(4, dtype=np.float32)[:2]  # two "products": the first two axes
    fmap = np.zeros((4, 2, 3), np.float32)  # (C, h, w)
    fmap[0, 0, 0] = 5.0  # exactly the first prototype, any length
    fmap[1, 0, 1] = 1.0  # the second
    fmap[:, 1, 2] = [1.0, 1.0, 0.0, 0.0]  # between both: cos 0.707 to each
    fmap[2, 1, 0] = 1.0  # like neither
    seen = likeness(fmap, prototypes)
    assert seen.shape == (2, 3) and seen.dtype == np.float32
    assert seen[0, 0] == pytest.approx(1.0) and seen[0, 1] == pytest.approx(1.0)
    assert seen[1, 2] == pytest.approx(2 ** -0.5) and seen[1, 0] == pytest.approx(0.0)
    assert seen[0, 2] == pytest.approx(0.0)  # an all-zero cell: no product, and no NaN


def test_a_failed_job_cancels_the_side_work_queued_behind_it():
    """The windows' and the outlined boxes' model calls run on the side pool: when one fails, those not started
    yet are dropped (a model server timing out would otherwise hold the pool for each of them in turn)."""
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    from gateway.service import _finished

    failed: Future = Future()
    failed.set_exception(RuntimeError("embedding service timed out after 30s"))
    release, ran = threading.Event(), []
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(release.wait, 10)  # the pool's one thread is taken: the next job waits in the queue
        queued = pool.submit(ran.append, "queued")
        with pytest.raises(RuntimeError, match="timed out"):
            _finished([failed, queued])
        release.set()
        assert busy.result() is True
    assert queued.cancelled() and ran == []
    done: Future = Future()
    done.set_result(3)
    assert _finished([done]) == [3]


def test_the_product_its_details_confirm_outlines_its_item_again(small_index, stub, tmp_path):
    """A confirmed product is the very thing photographed: its own outline replaces a box that misses the item,
    and the answer keeps it first and confirmed; when its outline is the box searched already, nothing changes."""
    from dataclasses import replace

    from evaluation.scenes import box_iou
    from gateway.config import Config
    from gateway.images import QueryImage
    from gateway.service import SearchService

    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")), stub)
    svc.indexes.load()
    photo, truth = busy_scene("11837", 3)
    image = QueryImage.decode(photo, 10_000_000)
    options = SearchOptions(threshold=0, top_k=3)
    vector, model = stub.embed(photo)
    corner = Crop(0.0, 0.0, 0.3, 0.3)
    found = replace(svc.search_vector(vector, model, options, pinned="11837", confirmed=True), box=corner)
    fmap, _ = stub.feature_map(photo, 448)
    again = svc.reoutlined(image, found, fmap, options)
    assert box_iou(again.box.fractions(), truth) >= 0.5 and box_iou(corner.fractions(), truth) < 0.5
    assert again.hits[0].product["id"] == "11837" and again.pinned == "11837" and again.confirmed
    assert svc.reoutlined(image, replace(found, box=again.box), fmap, options) is None
    assert svc.reoutlined(image, replace(found, pinned="no such product"), fmap, options) is None


@pytest.mark.parametrize("confirmed", [True, False])
def test_only_a_confirmed_product_outlines_the_item_again(small_index, stub, tmp_path, monkeypatch, confirmed):
    """A product the details only lift may be a lookalike: its outline is not searched."""
    from dataclasses import replace

    import gateway.service as service_module
    from gateway.config import Config
    from gateway.service import SearchService

    asked = []
    monkeypatch.setattr(service_module.SearchService, "confirmed",
                        lambda self, photo, found, options, keys=None, rivals=(): replace(
                            found, pinned=found.hits[0].product["id"], confirmed=confirmed))
    monkeypatch.setattr(service_module.SearchService, "reoutlined",
                        lambda self, photo, found, fmap, options: asked.append(fmap.shape) or None)
    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")), stub)
    svc.indexes.load()
    photo, _ = busy_scene("11837", 3)
    svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3))
    assert len(asked) == int(confirmed)


@pytest.mark.parametrize("failure", ["model", "backend"])
def test_when_the_confirmed_products_outline_cannot_be_made_the_confirmed_answer_stands(small_index, stub, tmp_path,
                                                                                       monkeypatch, caplog, failure):
    from dataclasses import replace

    import gateway.service as service_module
    from gateway.config import Config
    from gateway.images import QueryImage
    from gateway.service import SearchService
    from modelserver.client import ModelServerError
    from search import SearchUnavailable

    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")), stub)
    svc.indexes.load()
    photo, _ = busy_scene("11837", 3)
    options = SearchOptions(threshold=0, top_k=3)
    vector, model = stub.embed(photo)
    found = replace(svc.search_vector(vector, model, options, pinned="11837", confirmed=True),
                    box=Crop(0.0, 0.0, 0.3, 0.3))
    fmap, _ = stub.feature_map(photo, 448)

    def fails(*args):
        raise ModelServerError("embedding service timed out") if failure == "model" else SearchUnavailable("gone")

    monkeypatch.setattr(service_module.SearchService, "_window_vector", lambda self, data, model: fails())
    if failure == "backend":
        monkeypatch.setattr(service_module, "_item_heat", lambda index, fmap, row: fails())
    with caplog.at_level("WARNING"):
        assert svc.reoutlined(QueryImage.decode(photo, 10_000_000), found, fmap, options) is None
    reason = "embedding service timed out" if failure == "model" else "gone"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"no outline of the confirmed product: {reason}"]
