"""Search as the routes see it: query image or product id in, ranked products out.

The service checks the query against the served index version and hands it to the ranking (ranking/),
which every backend and the offline evaluation share; it never touches a backend itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from gateway import metrics
from gateway.config import Config
from gateway.errors import BadRequest, NotFound, Unavailable
from gateway.images import Crop, DecodeSlots, FetchSlots, QueryImage, query_image
from gateway.index import CatalogIndex, IndexManager
from gateway.locate import LocateSettings, area, best_window, common_part, other_items, windows
from gateway.outline import OutlineSettings, agreed, heat, likeness, outline
from gateway.query_token import (
    MAX_ITEMS,
    MAX_PINNED_CHARS,
    MAX_URL_CHARS,
    ExpiredQuery,
    Query,
    QueryItem,
    QueryTokens,
    key_from_secret,
    new_key,
    picture_digest,
)
from modelio.imaging import ImageError
from modelserver.client import ModelClient, ModelServerError
from ranking import Guess, Ranked, RankOptions, rank_product, rank_query
from ranking.appearance import HIST_SIZE, histogram_of
from ranking.verify import VerifySettings, confirmed, lifted, strongest
from search import SearchUnavailable

log = logging.getLogger(__name__)
#: What a shopper is told while search cannot answer (no index yet, a model that does not match it): the
#: reason, which names paths, stores or models, goes to the log and to the admin listener's /readyz.
NOT_READY = "search is not ready right now: please try again in a few minutes"


#: The windows a whole photo is searched in (gateway/locate.py), chosen on the shopper-photo protocol's tuning half.
LOCATE = LocateSettings()

#: How the found item is outlined in a whole photo (gateway/outline.py), chosen on the same tuning half.
OUTLINE = OutlineSettings()
ANYWHERE = replace(OUTLINE, level=OUTLINE.anywhere_level)  # the outline of any product's likeness
#: How the very product is confirmed by its details (ranking/verify.py; docs/QUALITY.md).
VERIFY = VerifySettings()

#: What a shopper can set on one search (the ranking's options).
SearchOptions = RankOptions


@dataclass(frozen=True)
class Hit:
    product: dict
    score: float  # cosine similarity in the index's search space
    similarity: float  # calibrated percent (see ranking/calibration.py)
    match: float  # the ranking score (percent) that orders the list (ranking/rank.py)

    @property
    def percent(self) -> float:
        """The number a shopper sees, rounded: the match that orders the list."""
        return round(self.match, 1)


#: The whole photo as a box.
WHOLE = Crop(0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Item:
    """One item of the query's photo: where it is, and the category of the catalog's closest product to it
    (None: nothing close); with the vector and colour that search it (the others carry them to the token)."""

    box: Crop
    category: str | None
    vector: np.ndarray | None = None
    hist: np.ndarray | None = None


@dataclass(frozen=True)
class Results:
    hits: list[Hit]
    guess: Guess | None  # None: ranked by similarity alone
    first_group: int = 0  # how many leading hits are in the guessed category
    anchor: dict | None = None  # the product of "more like this"
    no_close_match: bool = False  # the best match is below the catalog's fitted rule: we don't carry this
    vector: np.ndarray | None = None  # a query image's model vector (for its query token) ...
    model: str = ""  # ... and the backbone that made it
    hist: np.ndarray | None = None  # ... and its colour histogram (ranking/appearance.py)
    index_version: str = ""  # the index version that ranked these results ...
    index_model: str = ""  # ... and the backbone it was built with
    box: Crop | None = None  # the part of a whole photo searched, when the gateway found the item in it
    closer_outside_filter: bool = False  # nothing in the shopper's filter is close, but the catalog has it
    items: tuple[Item, ...] = ()  # a photo's items, the searched one first (gateway/locate.py)
    pinned: str = ""  # the product the photo's details put first (ranking/verify.py), first on every page ...
    confirmed: bool = False  # ... and whether they confirm it as the very product (else they only lifted it)


@dataclass(frozen=True)
class Outlines:
    """What a whole photo's feature map gave (``SearchService.outlined``): the search of the box the catalog sees
    best, other boxes' searches whose details may weigh more, and the map itself (None: no map)."""

    best: Results | None = None
    rivals: tuple[Results, ...] = ()
    fmap: np.ndarray | None = None


@dataclass(frozen=True)
class SearchQuery:
    """One search request's query, as the HTTP layer read it."""

    upload: bytes | None = None  # an uploaded photo's bytes (None: no upload)
    image_url: str = ""
    token: str = ""  # a query token: refine an earlier search without the photo
    crop: Crop | None = None
    with_picture: bool = False  # the page shows the query's picture
    picture: str = ""  # the picture a page sent back with ``token`` (shown only if it is the token's)
    item: int = 0  # with ``token``: which of its photo's items to search (0: the one it searched)


@dataclass(frozen=True)
class Answer:
    """One search's answer: the results (with the version that ranked them), the token to refine them, and
    what the page shows of the query."""

    found: Results
    token: str
    image_url: str = ""  # the query's image URL ("" for an upload)
    picture: str = ""  # the query picture as a data: URL ("" when not asked for)


#: The only kind of query picture a page shows (``QueryImage.picture`` makes them).
PICTURE_PREFIX = "data:image/jpeg;base64,"


class SideWork:
    """A small thread pool for the part of a query that does not need its vector (the colour histogram), so
    that it runs while the model server computes the vector instead of after it. One pool per process: a
    forked gunicorn worker inherits the parent's pool without its threads, and would wait on it forever."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args: object) -> Future:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="photo-side")
                self._pid = os.getpid()
            return self._pool.submit(fn, *args)


class SearchService:
    def __init__(self, config: Config, client: ModelClient) -> None:
        self.config = config
        self.client = client
        self.indexes = IndexManager(config.index_uri, config.index_cache, config.index_poll_s, config.backends)
        self.url_fetches = FetchSlots(config.url_fetch_concurrency)
        self.decodes = DecodeSlots(config.decode_concurrency)
        key = config.tokens.key or (key_from_secret(config.query_token_secret_arn) if config.query_token_secret_arn
                                    else new_key())
        self.tokens = QueryTokens(key, config.tokens.ttl_s, config.tokens.old_keys)
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        self._ready_lock = threading.Lock()
        self.side_work = SideWork()

    @property
    def index(self) -> CatalogIndex | None:
        return self.indexes.current

    def require_index(self) -> CatalogIndex:
        index = self.indexes.current
        if index is None:
            raise Unavailable(NOT_READY, detail=self.indexes.error or "index not loaded")
        return index

    def embed_image(self, image: bytes) -> tuple[np.ndarray, str]:
        """The model's vector of ``image`` and the backbone that made it (``ImageError``/``ModelServerError``)."""
        with metrics.EMBEDDING.time():
            return self.client.embed(image)

    def search(self, query: SearchQuery, options: SearchOptions) -> Answer:
        """One search request: a new photo or image URL (cropped when asked), else the vector of its query
        token or of one of the other items it carries (no upload, no model call). Decides which, searches, and
        issues the token of the answer. The page is shown the whole photo, whatever part of it was searched."""
        if len(query.image_url) > MAX_URL_CHARS:
            raise BadRequest(f"that image link is too long (over {MAX_URL_CHARS:,} characters): save the picture "
                             "and upload it instead")
        known, refused = self._verified(query.token)
        if query.upload is not None or (query.image_url and (known is None or known.image_url != query.image_url)):
            photo = query_image(query.upload, query.image_url, self.config, self.url_fetches, self.decodes)
            if query.crop is not None:
                found = within(self.search_image(photo.cropped(query.crop), options), query.crop)
            else:
                found = self.search_image(photo, options, locate=self.config.locate_item)
            url = "" if query.upload is not None else query.image_url
            return self._answer(found, url, photo.picture() if query.with_picture else "")
        if not query.token:
            raise BadRequest("no image: choose or drop a photo, or paste a link to one")
        if query.crop is not None:
            raise BadRequest("to search part of the photo, give the photo again with the box drawn on it")
        if refused is not None:
            raise refused
        if known.backbone_id != self.require_index().backbone_id:
            raise ExpiredQuery("the search engine has been updated since this search: choose the photo again")
        found = self.search_item(known, query.item, options)
        return self._answer(found, known.image_url, self.token_picture(query.picture, known)
                            if query.with_picture else "")

    def search_item(self, known: Query, item: int, options: SearchOptions) -> Results:
        """The search of a token's query (``item`` 0) or of its photo's other item ``item`` (1 and up), with
        no model call: that item comes first in the answer's items, the others keep their order."""
        if not 0 <= item <= len(known.items):
            raise BadRequest("that item is not in this search any more: choose it on the photo again")
        index = self.require_index()
        box = WHOLE if known.box is None else Crop(*known.box)
        items = [Item(box, None, known.vector, known.hist),
                 *(Item(Crop(*o.box), o.category or None, o.vector, o.hist) for o in known.items)]
        chosen = items.pop(item)
        found = self.search_vector(chosen.vector, known.backbone_id, options, chosen.hist,
                                   pinned=known.pinned if item == 0 else "", confirmed=known.confirmed and item == 0)
        if item:  # the item searched before is now one of the others: named like them, by its closest product
            items[0] = replace(items[0], category=_category(index, _closest(index, known.vector)))
        return replace(found, box=None if chosen.box == WHOLE else chosen.box,
                       items=(replace(chosen, category=_main_category(index, found)), *items))

    def _verified(self, token: str) -> tuple[Query | None, ExpiredQuery | None]:
        """The query of ``token`` (verified once), or why it cannot be used: that only matters when it is the
        query (a new photo with a stale token is a new search)."""
        try:
            return (self.tokens.verify(token), None) if token else (None, None)
        except ExpiredQuery as exc:
            return None, exc

    def _answer(self, found: Results, image_url: str, shown: str) -> Answer:
        box = None if found.box is None else found.box.fractions()
        others = tuple(QueryItem(item.box.fractions(), item.category or "", item.vector, item.hist)
                       for item in found.items[1:MAX_ITEMS + 1] if item.vector is not None)
        carried = len(found.pinned) <= MAX_PINNED_CHARS  # a longer id stays first on this page only
        token = self.tokens.issue(Query(found.vector, found.model, image_url,
                                        picture_digest(shown) if shown else "", found.hist, box, others,
                                        pinned=found.pinned if carried else "",
                                        confirmed=found.confirmed and carried))
        return Answer(found, token, image_url, shown)

    @staticmethod
    def token_picture(shown: str, query: Query) -> str:
        """``shown`` when it is the picture ``query``'s token was issued with, else "" (a stranger's picture is
        never shown)."""
        return shown if shown.startswith(PICTURE_PREFIX) and picture_digest(shown) == query.picture_digest else ""

    def search_image(self, photo: QueryImage, options: SearchOptions, locate: bool = False) -> Results:
        """Products that look like ``photo``; with ``category_first`` its guessed category ranks first.
        The colour histogram (~3 ms of CPU) is made from the decoded photo while the model server works on
        the vector. With ``locate``, the part of the photo where the catalog sees a product best is searched
        when it beats the whole (gateway/locate.py; ``Results.box`` says which), and the photo's other items
        follow the searched one in ``Results.items``. The photo's keypoints, when the index can confirm a
        product by them, are extracted beside the vector too."""
        keys = self._keypoints_of(photo)
        hist = self.side_work.submit(histogram_of, photo.image)
        try:
            vector, backbone_id = self.embed_image(photo.data)
            located = self.locate(photo, vector, backbone_id) if locate else None
        except BaseException:
            for work in (hist, keys):  # not started yet: a failed query leaves no work (and no image) queued
                if work is not None:
                    work.cancel()
            raise
        if located is None or located.box is None:
            found = self.search_vector(vector, backbone_id, options, hist.result())
        else:
            hist.cancel()
            found = replace(self.search_vector(located.vector, backbone_id, options,
                                               histogram_of(located.part.image)), box=located.box)
        outlines = Outlines()
        if located is not None:  # the windows looked: the product they found outlines the item
            outlines = self.outlined(photo, found, options, located.seen)
            found = outlines.best or found
        found = self.confirmed(photo, found, options, keys, outlines.rivals)
        if found.confirmed and outlines.fmap is not None:  # the very product outlines its item best
            found = self.reoutlined(photo, found, outlines.fmap, options) or found
        if located is not None:  # the first product's details place its item more tightly than any outline
            found = self.placed(photo, found, options) or found
        main = Item(found.box or WHOLE, _main_category(self.require_index(), found))
        return replace(found, items=(main, *(located.others if located else ())))

    def _keypoints_of(self, photo: QueryImage) -> Future | None:
        """The photo's keypoints, being extracted on the side pool; None when the served index has none."""
        index = self.indexes.current
        if index is None or index.keypoints is None:
            return None
        from localfeatures.sift import extract

        return self.side_work.submit(extract, photo.image)

    def confirmed(self, photo: QueryImage, found: Results, options: SearchOptions,
                  keys: Future | None = None, rivals: tuple[Results, ...] = ()) -> Results:
        """``found`` ranked again with the product that the searched part's details confirm, or else lift, first
        (ranking/verify.py on the CNN's first ``VERIFY.candidates``), or as it is: when the version has no
        keypoints, the details change nothing, or the check fails (logged: it never fails a search). ``keys``: the
        whole photo's keypoints being extracted (used when the whole photo was searched, else those of the part
        searched are). ``rivals``: other searches of the same photo (other boxes around its item); the search
        whose details weigh most (``strongest``) is the one answered, ``found`` on a tie."""
        index = self.require_index()
        searches = [found, *(r for r in rivals if r.box != found.box and r.vector is not None)]
        if index.keypoints is None or found.vector is None or found.model != index.backbone_id:
            searches = []
        if keys is not None and not any(search.box is None for search in searches):
            keys.cancel()
        if not searches:
            return found
        try:
            jobs = [self.side_work.submit(self._details, index, photo, search, keys) for search in searches[1:]]
            checks = [self._details(index, photo, found, keys), *_finished(jobs)]
        except Exception:  # noqa: BLE001 - OpenCV's own errors: the CNN's answer stands
            log.exception("the local-feature check failed; the search keeps the CNN's order")
            return found
        pick = strongest([(nearest.similarities, counts) for nearest, counts in checks], VERIFY)
        (nearest, counts), chosen = checks[pick], searches[pick]
        best = confirmed(counts, VERIFY)
        first = best if best is not None else lifted(nearest.similarities, counts, VERIFY)
        if first is None:
            return chosen
        again = self.search_vector(chosen.vector, chosen.model, options, chosen.hist,
                                   pinned=str(index.products[nearest.rows[first]]["id"]), confirmed=best is not None)
        return replace(again, box=chosen.box)

    def _details(self, index: CatalogIndex, photo: QueryImage, search: Results, keys: Future | None
                 ) -> tuple[Ranked, list[int]]:
        """The CNN's first ``VERIFY.candidates`` of ``search`` and the inliers of each with the keypoints of the
        part of ``photo`` it searched (``keys``: the whole photo's, when it searched the whole)."""
        from localfeatures.sift import extract, inliers_each

        if keys is not None and search.box is None:
            query = keys.result()
        else:
            query = extract((photo if search.box is None else photo.cropped(search.box)).image)
        nearest = _nearest(index, search.vector, VERIFY.candidates)
        return nearest, inliers_each(query, [index.keypoints.features(row) for row in nearest.rows])

    def locate(self, photo: QueryImage, vector: np.ndarray, backbone_id: str) -> Location | None:
        """Where in ``photo`` to search and which other items it shows; None when the whole photo is searched
        without looking (no windows: a small photo, or one that matches a product almost exactly). The windows
        are embedded at once on the side pool; a window the model refuses is left out."""
        index = self.indexes.current
        if index is None or backbone_id != index.backbone_id or np.shape(vector) != (index.model_dim,):
            return None  # search_vector says why
        whole = _closest(index, vector)
        crops = windows(*photo.image.size, LOCATE)
        if whole[0] >= LOCATE.good_enough or not crops:
            return None
        parts = [photo.cropped(crop) for crop in crops]
        vectors = _finished([self.side_work.submit(self._window_vector, part.data, index.backbone_id)
                             for part in parts])
        closest = [(None, None) if v is None else _closest(index, v) for v in vectors]
        scores, rows = [c[0] for c in closest], [c[1] for c in closest]
        searched = self._searched(index, photo, (crops, parts, vectors, closest), whole[0])
        box, part, found, row = searched or (WHOLE, None, None, whole[1])
        least = max(LOCATE.item_least, index.view.no_match_percent or 0.0)
        others = tuple(Item(crops[i], _category(index, closest[i]), vectors[i], histogram_of(parts[i].image))
                       for i in other_items(crops, scores, rows, box, row, least, LOCATE))
        return Location(None if searched is None else box, part, found, others, _seen(closest))

    def outlined(self, photo: QueryImage, found: Results, options: SearchOptions, seen: dict[int, float]
                 ) -> Outlines:
        """``Outlines.best``: ``found``'s search again on the outline of the item in ``photo`` (gateway/outline.py):
        of the boxes where the photo's feature map looks like one of the catalog's closest products to ``found``,
        or like any product (the version's prototypes), the box the catalog sees best. None when there is no
        outline (an empty catalog, a map of another model, no region that stands out, a box too small to search,
        one seen less well than ``found``) or it cannot be made (an older archive refuses feature maps, a
        backend fails): the located search stands, and the log says why. ``Outlines.rivals``: the search of the
        any-product box when it is not the best and the version has keypoints (its details may prefer it).
        ``seen``: the products the photo's windows found, whose outlines' ``agreed`` box is one more to search."""
        index = self.indexes.current
        mapper = getattr(self.client, "feature_map", None)  # a client without maps (a test's stub) outlines nothing
        if index is None or found.vector is None or mapper is None:
            return Outlines()
        nearest = _nearest(index, found.vector, OUTLINE.guides)
        try:
            fmap = _feature_map(index, mapper, photo.data)
            guided, anywhere = _outline_boxes(index, fmap, nearest.rows, seen)
            scored = self._scored_boxes(index, photo, guided if anywhere is None else [*guided, anywhere])
        except (ImageError, ModelServerError, SearchUnavailable) as exc:
            log.warning("no outline of the item: %s", exc)
            return Outlines()
        best = max(scored, key=lambda box: box[0], default=None)  # the first of equals: a product's outline
        if best is not None and not OUTLINE.keeps(nearest.similarities[0], best[0]):
            best = None
        rival = next((box for box in scored if box[1] == anywhere), None) if index.keypoints is not None else None
        rivals = () if rival is None or rival is best else (self._box_search(index, rival, options),)
        return Outlines(self._box_search(index, best, options), rivals, fmap)

    def reoutlined(self, photo: QueryImage, found: Results, fmap: np.ndarray, options: SearchOptions
                   ) -> Results | None:
        """``found`` (its first product confirmed by its details) searched again on the outline of that very
        product in the photo's feature map ``fmap``, still first and confirmed; None when the outline is the
        box searched already, there is none (no region stands out, too small to search, not embedded) or it
        cannot be made (the model server or the backend fails: logged, the confirmed answer stands)."""
        index = self.indexes.current
        row = None if index is None else index.row_of(found.pinned)
        if row is None or fmap is None:
            return None
        try:
            box = outline(_item_heat(index, fmap, row), OUTLINE)
            scored = [] if box is None or box == found.box else self._scored_boxes(index, photo, [box])
        except (ImageError, ModelServerError, SearchUnavailable) as exc:
            log.warning("no outline of the confirmed product: %s", exc)
            return None
        return self._box_search(index, scored[0] if scored else None, options, found.pinned, confirmed=True)

    def placed(self, photo: QueryImage, found: Results, options: SearchOptions) -> Results | None:
        """``found`` searched again on the box where its first product lies in ``photo`` by their details: the
        extent of that product's keypoints, carried into the photo by the similarity transform that at least
        ``VERIFY.min_inliers`` of their matches fit (``_placed_box``; docs/QUALITY.md). None when the version has
        no keypoints, nothing was located, the details do not place it, the box is the one searched or too small,
        or its search puts another product first; a failure (the model server, the backend, OpenCV) is logged
        and the answer stands."""
        index = self.indexes.current
        if index is None or index.keypoints is None or found.box is None or not found.hits:
            return None
        first = str(found.hits[0].product["id"])
        row = index.row_of(first)
        if row is None:
            return None
        try:
            box = _placed_box(index, photo, found.box, row)
            scored = [] if box is None or box == found.box else self._scored_boxes(index, photo, [box])
        except (ImageError, ModelServerError, SearchUnavailable) as exc:
            log.warning("no box placed by the details: %s", exc)
            return None
        except Exception:  # noqa: BLE001 - OpenCV's own errors: the answer stands
            log.exception("the details could not place the item; the answer keeps its box")
            return None
        again = self._box_search(index, scored[0] if scored else None, options, found.pinned, found.confirmed)
        if again is None or not again.hits or str(again.hits[0].product["id"]) != first:
            return None
        return again

    def _box_search(self, index: CatalogIndex, scored: tuple[float, Crop, QueryImage, np.ndarray] | None,
                    options: SearchOptions, pinned: str = "", confirmed: bool = False) -> Results | None:
        """The search of one of ``_scored_boxes`` (``pinned`` first, ``confirmed``: as ``search_vector``); None for
        none."""
        if scored is None:
            return None
        _, box, part, vector = scored
        return replace(self.search_vector(vector, index.backbone_id, options, histogram_of(part.image), pinned=pinned,
                                          confirmed=confirmed), box=box)

    def _scored_boxes(self, index: CatalogIndex, photo: QueryImage, boxes: list[Crop]
                      ) -> list[tuple[float, Crop, QueryImage, np.ndarray]]:
        """Each of ``boxes`` in ``photo`` that can be searched, with the similarity of its closest product, its
        image and its vector (embedded at once on the side pool)."""
        parts = []
        for box in boxes:
            try:
                parts.append((box, photo.cropped(box)))
            except BadRequest:  # under the smallest crop a side
                continue
        vectors = _finished([self.side_work.submit(self._window_vector, part.data, index.backbone_id)
                             for _, part in parts])
        return [(_closest(index, vector)[0], box, part, vector)
                for (box, part), vector in zip(parts, vectors, strict=True) if vector is not None]

    def _searched(self, index: CatalogIndex, photo: QueryImage, tried: tuple[list, list, list, list], whole: float
                  ) -> tuple[Crop, QueryImage, np.ndarray, int | None] | None:
        """The part of ``photo`` to search instead of the whole (its box, image, vector and closest product), or
        None. ``tried``: the windows, their images, vectors and (score, closest product)."""
        crops, parts, vectors, closest = tried
        scores = [score for score, _ in closest]
        best = best_window(whole, scores)
        if best is None:
            return None
        inner = common_part(crops, scores, LOCATE.agree, *photo.image.size)
        if inner is not None:
            part = photo.cropped(inner)
            inner_vector = self._window_vector(part.data, index.backbone_id)
            if inner_vector is not None:
                score, row = _closest(index, inner_vector)
                if score >= scores[best] - LOCATE.slack:
                    return inner, part, inner_vector, row
        return crops[best], parts[best], vectors[best], closest[best][1]

    def _window_vector(self, data: bytes, backbone_id: str) -> np.ndarray | None:
        """A window's vector; None when the model refuses it or answers with another model."""
        try:
            vector, model = self.embed_image(data)
        except ImageError:
            return None
        return vector if model == backbone_id else None

    def search_vector(self, vector: np.ndarray, backbone_id: str, options: SearchOptions,
                      hist: np.ndarray | None = None, pinned: str = "", confirmed: bool = False) -> Results:
        """Products close to a model vector (a fresh embedding, or a query token's) and, inside a category,
        to its colour histogram ``hist``: 503 when the vector's model is not the index's, since the two
        spaces cannot be compared. ``pinned``: the product id the photo's details put first (when this version
        still has it and the shopper's filter lets it answer); ``confirmed``: they confirm it as the very product."""
        index = self.require_index()
        if backbone_id != index.backbone_id:
            raise Unavailable(NOT_READY, detail=f"the embedding model ({backbone_id}) does not match the index "
                              f"({index.backbone_id}); rebuild the index or deploy the matching model archive")
        if np.shape(vector) != (index.model_dim,):
            raise Unavailable(NOT_READY, detail=f"the query vector has {np.size(vector)} numbers, the index's model "
                              f"{index.model_dim}")
        query = index.prepare(vector)
        look = None
        if index.appearance is not None and hist is not None and np.shape(hist) == (HIST_SIZE,):
            look = index.appearance.vectors(hist, query)[0]
        row = index.row_of(pinned) if pinned else None
        found = _results(index, rank_query(index.view, query, options, look, pinned=row))
        return replace(found, vector=np.asarray(vector, dtype=np.float32), model=backbone_id, hist=hist,
                       pinned=pinned if row is not None else "", confirmed=confirmed and row is not None)

    def similar(self, product_id: str, options: SearchOptions) -> Results:
        """More like this: the stored vector of a product, the product itself left out. No model call.

        Category-first here means the product's own category first (no guessing needed)."""
        index = self.require_index()
        row = index.row_of(str(product_id))
        if row is None:
            raise NotFound(f"no product with id {product_id!r} in the catalog")
        return replace(_results(index, rank_product(index.view, row, options)), anchor=index.products[row])

    def readiness(self) -> tuple[bool, str]:
        """Index loaded, TorchServe answering, and serving the index's backbone. Cached briefly."""
        with self._ready_lock:
            checked, ok, reason = self._ready
            if time.monotonic() - checked < self.config.ready_cache_s:
                return ok, reason
            ok, reason = self._check_ready()
            self._ready = (time.monotonic(), ok, reason)
            return ok, reason

    def _check_ready(self) -> tuple[bool, str]:
        index = self.indexes.current
        if index is None:
            return False, self.indexes.error or "index not loaded"
        try:
            served = self.client.probe()
        except (ModelServerError, ImageError) as exc:
            return False, f"embedding model not ready: {exc}"
        if served != index.backbone_id:
            return False, f"model mismatch: TorchServe serves {served}, index was built with {index.backbone_id}"
        if self.indexes.from_cache:
            return True, f"ready, serving the cached copy of version {index.version} ({self.indexes.error})"
        return True, "ready"


@dataclass(frozen=True)
class Location:
    """Where in a photo to search: the box (None: the whole photo), its image and vector; the photo's other
    items, best first; and the products the windows found (row: the similarity of its closest window, percent)."""

    box: Crop | None
    part: QueryImage | None
    vector: np.ndarray | None
    others: tuple[Item, ...]
    seen: dict[int, float]


def _finished(jobs: list[Future]) -> list:
    """Each job's result, in order. When one fails, the jobs not started yet are cancelled before its error is
    raised: a failed query (or outline) leaves no model calls queued on the side pool behind it."""
    try:
        return [job.result() for job in jobs]
    except BaseException:
        for job in jobs:
            job.cancel()
        raise


def within(found: Results, crop: Crop) -> Results:
    """Results of a search of the ``crop`` part of a photo, said of the whole photo: its box, its one item."""
    return replace(found, box=crop, items=tuple(replace(item, box=crop) for item in found.items[:1]))


def _nearest(index: CatalogIndex, vector: np.ndarray, k: int) -> Ranked:
    """A model vector's ``k`` closest products by similarity alone (no filter), with calibrated similarities."""
    return rank_query(index.view, index.prepare(vector), RankOptions(threshold=0.0, top_k=k, category_first=False))


def _closest(index: CatalogIndex, vector: np.ndarray) -> tuple[float, int | None]:
    """The calibrated similarity of a model vector's closest product (similarity alone, no filter) and its row;
    (-inf, None) for none."""
    ranked = _nearest(index, vector, 1)
    return (ranked.similarities[0], ranked.rows[0]) if ranked.similarities else (float("-inf"), None)


def _seen(closest: list[tuple[float | None, int | None]]) -> dict[int, float]:
    """The products the windows found (``closest``: each window's similarity and closest product, ``(None, None)``
    for one not embedded), each with the similarity of its closest window."""
    seen: dict[int, float] = {}
    for score, product in closest:
        if product is not None and score > seen.get(product, float("-inf")):
            seen[product] = score
    return seen


def _feature_map(index: CatalogIndex, mapper: Callable, data: bytes) -> np.ndarray | None:
    """The photo ``data``'s feature map at ``OUTLINE.side`` (which ``mapper`` gives); None for a map of another
    model."""
    fmap, model = mapper(data, OUTLINE.side)
    return fmap if model == index.backbone_id and fmap.shape[0] == index.model_dim else None


def _outline_boxes(index: CatalogIndex, fmap: np.ndarray | None, rows: list[int], seen: dict[int, float]
                   ) -> tuple[list[Crop], Crop | None]:
    """From one feature map of a photo: the outlines of products ``rows``, each box once, then the ``agreed`` one of
    the outlines of the products ``seen`` (row: similarity) when it is another; and the outline of where it looks
    like any product (the version's prototypes; None without them, or when no region stands out). Nothing without
    a map."""
    if fmap is None:
        return [], None
    boxes: list[Crop] = []
    for row in rows:
        box = outline(_item_heat(index, fmap, row), OUTLINE)
        if box is not None and box not in boxes:
            boxes.append(box)
    outlines = [(score, box) for row, score in seen.items()
                if (box := outline(_item_heat(index, fmap, row), OUTLINE)) is not None]
    subject = agreed(outlines, OUTLINE)
    if subject is not None and subject not in boxes:
        boxes.append(subject)
    anywhere = None if index.prototypes is None else outline(likeness(fmap, index.prototypes), ANYWHERE)
    return boxes, anywhere


def _placed_box(index: CatalogIndex, photo: QueryImage, searched: Crop, row: int) -> Crop | None:
    """Where product ``row`` lies in ``photo`` by its details, found in the ``searched`` part: the box around its
    keypoints (on a studio photo, the product's own extent) carried into the photo by the transform their matches
    fit; None for fewer than ``VERIFY.min_inliers`` that fit, or a box whose centre is outside the searched one or
    whose area is under ``VERIFY.place_least`` of the searched one's (a transform gone astray)."""
    from localfeatures.sift import described_size, extract, placement

    width, height = photo.image.size
    left, top, right, bottom = searched.box(width, height)
    region = photo.image.crop((left, top, right, bottom))
    product = index.keypoints.features(row)
    place = placement(extract(region), product)
    if place is None or place.inliers < VERIFY.min_inliers:
        return None
    described = described_size(*region.size)
    x_scale, y_scale = region.width / described[0], region.height / described[1]
    x0, y0, x1, y1 = place.extent(product.points)
    box = Crop(max(0.0, (left + x0 * x_scale) / width), max(0.0, (top + y0 * y_scale) / height),
               min(1.0, (left + x1 * x_scale) / width), min(1.0, (top + y1 * y_scale) / height))
    # a box carried off the photo (cut to an empty one) has its centre off it too: it never reaches ``area``
    centre = ((box.left + box.right) / 2, (box.top + box.bottom) / 2)
    if not (searched.left <= centre[0] <= searched.right and searched.top <= centre[1] <= searched.bottom):
        return None
    return box if area(box) >= VERIFY.place_least * area(searched) else None


def _item_heat(index: CatalogIndex, fmap: np.ndarray, row: int) -> np.ndarray:
    """Each cell's cosine to product ``row``: to its model vector when this replica holds them (they outline
    best, docs/QUALITY.md), else in the search space (the index's whitening)."""
    stored = index.model_vector(row)
    if stored is not None:
        return heat(fmap, lambda cells: cells, stored / max(float(np.linalg.norm(stored)), 1e-12))
    return heat(fmap, index.prepare, index.view.backend.vector(row))


def _category(index: CatalogIndex, closest: tuple[float | None, int | None]) -> str | None:
    """The category of the closest product, when it is close (the catalog's "no close match" rule); else None."""
    score, row = closest
    if row is None or score is None or score < (index.view.no_match_percent or 0.0):
        return None
    return str(index.products[row].get("category") or "") or None


def _main_category(index: CatalogIndex, found: Results) -> str | None:
    """The searched item's category: the ranking's guess, else its closest product's (None: not close)."""
    if found.guess is not None:
        return found.guess.category
    if found.no_close_match or found.vector is None:
        return None
    return _category(index, _closest(index, found.vector))


def _results(index: CatalogIndex, ranked: Ranked) -> Results:
    """Ranked rows of ``index`` as products, with the version that ranked them."""
    hits = [Hit(index.products[row], score, pct, match) for row, score, pct, match
            in zip(ranked.rows, ranked.scores, ranked.similarities, ranked.matches, strict=True)]
    return Results(hits, ranked.guess, ranked.first_group, no_close_match=ranked.no_close_match,
                   index_version=index.version, index_model=index.backbone_id,
                   closer_outside_filter=ranked.closer_outside_filter)
