"""The typed manifest (indexstore/manifest.py): every field serving reads is checked where a version is read from
the store; a version with any field corrupted is refused and the version served before keeps serving."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from gateway.index import IndexManager
from indexstore.manifest import MAX_BACKBONE_CHARS, Manifest, ManifestError
from indexstore.store import MANIFEST, POINTER, CorruptIndex, IndexData, open_store, publish, write_version
from ranking.calibration import UNCALIBRATED

NAN = float("nan")
GOOD = {"version": "v", "backbone": "resnet18-v1", "count": 3, "dim": 4,
        "calibration": {"points": [[0.2, 0.0], [0.5, 40.0], [0.8, 70.0], [1.0, 100.0]]},
        "no_match": {"percent": 62.5},
        "appearance": {"descriptor": "hsv-fg-112-v1", "weight": 0.85, "projection": None}}

#: (what is corrupted, the change): each wrong type, NaN, out of range or missing, one at a time.
CORRUPTIONS = [
    ("backbone missing", lambda m: m.pop("backbone")),
    ("backbone a number", lambda m: m.update(backbone=7)),
    ("backbone empty", lambda m: m.update(backbone="")),
    ("backbone too long", lambda m: m.update(backbone="x" * (MAX_BACKBONE_CHARS + 1))),
    ("count text", lambda m: m.update(count="3")),
    ("count true", lambda m: m.update(count=True)),
    ("dim negative", lambda m: m.update(dim=-1)),
    ("dim zero with products", lambda m: m.update(dim=0)),
    ("calibration a list", lambda m: m.update(calibration=[1, 2])),
    ("calibration points text", lambda m: m["calibration"].update(points="abc")),
    ("calibration points missing", lambda m: m["calibration"].pop("points")),
    ("calibration one point", lambda m: m["calibration"].update(points=[[1.0, 100.0]])),
    ("calibration point not a pair", lambda m: m["calibration"]["points"].__setitem__(1, [0.5])),
    ("calibration cosine NaN", lambda m: m["calibration"]["points"][1].__setitem__(0, NAN)),
    ("calibration percent infinite", lambda m: m["calibration"]["points"][1].__setitem__(1, float("inf"))),
    ("calibration cosine above 1", lambda m: m["calibration"]["points"][3].__setitem__(0, 1.01)),
    ("calibration percent above 100", lambda m: m["calibration"]["points"][3].__setitem__(1, 100.5)),
    ("calibration percent below 0", lambda m: m["calibration"]["points"][0].__setitem__(1, -1)),
    ("calibration percent text", lambda m: m["calibration"]["points"][1].__setitem__(1, "40")),
    ("calibration not increasing", lambda m: m["calibration"]["points"][1].__setitem__(0, 0.9)),
    ("calibration percents equal", lambda m: m["calibration"]["points"][2].__setitem__(1, 40.0)),
    ("no_match percent NaN", lambda m: m["no_match"].update(percent=NAN)),
    ("no_match percent text", lambda m: m["no_match"].update(percent="60")),
    ("no_match above 100", lambda m: m["no_match"].update(percent=101)),
    ("no_match missing percent", lambda m: m["no_match"].pop("percent")),
    ("appearance text", lambda m: m.update(appearance="yes")),
    ("appearance weight above 1", lambda m: m["appearance"].update(weight=1.5)),
    ("appearance weight NaN", lambda m: m["appearance"].update(weight=NAN)),
    ("appearance descriptor missing", lambda m: m["appearance"].pop("descriptor")),
    ("local features text", lambda m: m.update(local_features="sift")),
    ("local features descriptor missing", lambda m: m.update(local_features={"keypoints": 128})),
    ("local features descriptor a number", lambda m: m.update(local_features={"descriptor": 1})),
    ("appearance descriptor a number", lambda m: m["appearance"].update(descriptor=1)),
]


def test_a_good_manifest_reads_as_typed_values():
    info = Manifest.parse(GOOD)
    assert info.backbone == "resnet18-v1" and (info.count, info.dim) == (3, 4)
    assert info.calibration == ((0.2, 0.0), (0.5, 40.0), (0.8, 70.0), (1.0, 100.0))
    assert info.no_match_percent == 62.5 and info.appearance_descriptor == "hsv-fg-112-v1"
    assert info.appearance_weight == 0.85


def test_optional_sections_may_be_left_out_or_null_and_the_edges_pass():
    bare = {"version": "v", "backbone": "b" * MAX_BACKBONE_CHARS, "count": 0, "dim": 0}
    info = Manifest.parse(bare | {"calibration": None, "appearance": None})
    assert info.calibration is None and info.no_match_percent is None and info.appearance_descriptor is None
    assert info.local_features is None
    assert Manifest.parse(bare | {"local_features": None}).local_features is None
    assert Manifest.parse(bare | {"local_features": {"descriptor": "sift"}}).local_features == "sift"
    edges = {"points": [[-1, 0], [1, 100]]}
    assert Manifest.parse(bare | {"calibration": edges}).calibration == ((-1.0, 0.0), (1.0, 100.0))
    assert Manifest.parse(bare | {"calibration": {"points": UNCALIBRATED}}).calibration == ((0.0, 0.0), (1.0, 100.0))
    assert Manifest.parse(bare | {"appearance": {"descriptor": "d", "weight": 0}}).appearance_weight == 0.0
    assert Manifest.parse(bare | {"appearance": {"descriptor": "d", "weight": 1}}).appearance_weight == 1.0


@pytest.mark.parametrize(("what", "corrupt"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_each_corrupted_field_is_refused(what, corrupt):
    bad = copy.deepcopy(GOOD)
    corrupt(bad)
    with pytest.raises(ManifestError):
        Manifest.parse(bad)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store with one good version, served by an index manager."""
    root = tmp_path_factory.mktemp("manifest")
    store = open_store(root / "index")
    rows = np.eye(3, 4, dtype=np.float32)
    products = [{"id": str(i), "name": f"p{i}", "category": "A"} for i in range(3)]
    manifest = {k: GOOD[k] for k in ("backbone", "calibration", "no_match")}
    good = write_version(store, IndexData(rows, products, manifest))
    publish(store, good)
    manager = IndexManager(str(root / "index"), root / "cache", 0)
    manager.load()
    assert manager.current.version == good
    return store, manager, good


@pytest.mark.parametrize(("what", "corrupt"), [c for c in CORRUPTIONS if not c[0].startswith(("appearance", "dim"))],
                         ids=[c[0] for c in CORRUPTIONS if not c[0].startswith(("appearance", "dim"))])
def test_a_version_with_a_corrupted_manifest_is_refused_and_the_previous_keeps_serving(served, what, corrupt):
    store, manager, good = served
    data = store.get(f"versions/{good}/{MANIFEST}")
    bad = write_version(store, IndexData(np.eye(3, 4, dtype=np.float32),
                                         [{"id": str(i), "category": "A"} for i in range(3)],
                                         {k: GOOD[k] for k in ("backbone", "calibration", "no_match")}))
    manifest = json.loads(store.get(f"versions/{bad}/{MANIFEST}"))
    corrupt(manifest)
    store.put(f"versions/{bad}/{MANIFEST}", json.dumps(manifest).encode())  # NaN is written as JSON's NaN
    with pytest.raises(CorruptIndex):
        publish(store, bad)  # the build's own publish refuses it ...
    store.put(POINTER, json.dumps({"version": bad}).encode())  # ... so a stranger's pointer names it
    assert manager.refresh() is False
    assert manager.current.version == good and f"version {bad}:" in manager.error
    assert store.get(f"versions/{good}/{MANIFEST}") == data
    publish(store, good)
    manager.refresh()
    assert manager.error is None  # the store is fine again: nothing stale is reported


#: Each refusal word for word: the operator reading the log must be told which field and why.
MESSAGES = [
    ("not an object", [1], "the manifest is a list, not an object"),
    ("backbone missing", lambda m: m.pop("backbone"), "backbone is missing"),
    ("backbone a number", lambda m: m.update(backbone=7), "backbone must be text, not int"),
    ("count text", lambda m: m.update(count="3"), "count must be a whole number, not str"),
    ("count true", lambda m: m.update(count=True), "count must be a whole number, not bool"),
    ("dim negative", lambda m: m.update(dim=-1), "dim must be at least 0, not -1"),
    ("dim zero", lambda m: m.update(dim=0), "dim is 0 for a version with products"),
    ("calibration a list", lambda m: m.update(calibration=[1, 2]), "calibration must be an object or null, not list"),
    ("points text", lambda m: m["calibration"].update(points="abc"), "calibration.points must be a list, not str"),
    ("points an object", lambda m: m["calibration"].update(points={}), "calibration.points must be a list, not dict"),
    ("points missing", lambda m: m["calibration"].pop("points"), "calibration.points is missing"),
    ("one point", lambda m: m["calibration"].update(points=[[1.0, 100.0]]),
     "calibration.points must hold 2 to 64 points, not 1"),
    ("not a pair", lambda m: m["calibration"]["points"].__setitem__(1, [0.5]),
     "calibration.points[1] must be a [cosine, percent] pair"),
    ("a triple", lambda m: m["calibration"]["points"].__setitem__(1, [0.5, 40, 1]),
     "calibration.points[1] must be a [cosine, percent] pair"),
    ("cosine text", lambda m: m["calibration"]["points"][2].__setitem__(0, "0.8"),
     "calibration.points[2].cosine must be a number, not str"),
    ("cosine below -1", lambda m: m["calibration"]["points"][0].__setitem__(0, -1.01),
     "calibration.points[0].cosine must be a finite number from -1 to 1, not -1.01"),
    ("percent NaN", lambda m: m["calibration"]["points"][1].__setitem__(1, NAN),
     "calibration.points[1].percent must be a finite number from 0 to 100, not nan"),
    ("equal cosines", lambda m: m["calibration"]["points"][2].__setitem__(0, 0.5),
     "calibration.points must increase strictly in both cosine and percent"),
    ("no_match text", lambda m: m.update(no_match="60"), "no_match must be an object or null, not str"),
    ("no_match percent missing", lambda m: m["no_match"].pop("percent"), "no_match.percent is missing"),
    ("no_match percent true", lambda m: m["no_match"].update(percent=True),
     "no_match.percent must be a number, not bool"),
    ("appearance weight", lambda m: m["appearance"].update(weight=2),
     "appearance.weight must be a finite number from 0 to 1, not 2"),
    ("appearance descriptor", lambda m: m["appearance"].update(descriptor=None),
     "appearance.descriptor must be text, not NoneType"),
    ("version missing", lambda m: m.pop("version"), "version is missing"),
]


@pytest.mark.parametrize(("what", "corrupt", "message"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_each_refusal_word_for_word(what, corrupt, message):
    bad = copy.deepcopy(GOOD)
    if callable(corrupt):
        corrupt(bad)
    else:
        bad = corrupt
    with pytest.raises(ManifestError) as caught:
        Manifest.parse(bad)
    assert str(caught.value) == message


def test_the_limits_of_counts_and_points_on_both_sides():
    one = GOOD | {"count": 1, "dim": 0}
    with pytest.raises(ManifestError, match="dim is 0"):
        Manifest.parse(one)
    assert Manifest.parse(GOOD | {"count": 0, "dim": 0}).count == 0  # an empty version needs no dimension
    points = [[i / 64, i * 100 / 64] for i in range(1, 65)]  # 64 points: the most
    assert len(Manifest.parse(GOOD | {"calibration": {"points": points}}).calibration) == 64
    with pytest.raises(ManifestError, match="2 to 64 points, not 65"):
        Manifest.parse(GOOD | {"calibration": {"points": [[-1, 0]] + points}})
    assert Manifest.parse(GOOD | {"calibration": {"points": [[-1, 0], [1, 100]]}}).calibration[0] == (-1.0, 0.0)
    assert Manifest.parse(GOOD).version == "v"

