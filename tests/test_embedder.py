"""The in-process embedder (handlers/embedder.py), fast: what a model folder must promise before it serves, the
batches it embeds in, and a bad image failing alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from handlers.backbones import resolve_weights, sha256_file
from handlers.embedder import BACKBONE_FILE, Embedder, LoadedBackbone
from handlers.runtimes import probe_images
from modelio.imaging import ImageError
from tests.conftest import demo_image

NAME = "efficientnet_lite0"  # its weights install with a package: no download


@pytest.fixture(scope="module")
def eager() -> LoadedBackbone:
    return LoadedBackbone(NAME, resolve_weights(NAME)[1])


def _model_dir(tmp_path, eager: LoadedBackbone, **meta) -> dict:
    weights = resolve_weights(NAME)[1]
    shutil.copyfile(weights, tmp_path / "weights.pth")
    promised = {"name": NAME, "weights_file": "weights.pth", "weights_sha256": sha256_file(weights),
                "id": eager.backbone_id, "dim": eager.dim, "runtime": "eager", "model_file": None,
                "probe": eager.embed(probe_images()).tolist(), **meta}
    (tmp_path / BACKBONE_FILE).write_text(json.dumps({k: v for k, v in promised.items() if v is not ...}))
    return promised


def test_a_model_folder_that_keeps_its_promises_serves(tmp_path, eager):
    _model_dir(tmp_path, eager)
    loaded = Embedder.from_model_dir(tmp_path)
    assert (loaded.backbone_id, loaded.dim, loaded.runtime) == (eager.backbone_id, eager.dim, "eager")
    _model_dir(tmp_path, eager, runtime=..., probe=None)  # no runtime named: eager; no probe: nothing to compare
    assert Embedder.from_model_dir(str(tmp_path)).runtime == "eager"


@pytest.mark.parametrize("broken", ["id", "dim", "weights_sha256"])
def test_a_model_folder_that_promises_other_weights_is_refused(tmp_path, eager, broken):
    other = {"id": eager.backbone_id + "-other", "dim": eager.dim + 1, "weights_sha256": "0" * 64}[broken]
    meta = _model_dir(tmp_path, eager, **{broken: other})
    with pytest.raises(ValueError) as refused:
        Embedder.from_model_dir(tmp_path)
    assert str(refused.value) == (f"{BACKBONE_FILE} promises {meta['id']} (dim {meta['dim']}) but the packed weights "
                                  f"give {eager.backbone_id} (dim {eager.dim})")


def test_a_runtime_that_disagrees_with_eager_on_the_probe_is_refused(tmp_path, eager):
    probe = eager.embed(probe_images())
    probe[:, : probe.shape[1] // 2] *= -1
    _model_dir(tmp_path, eager, probe=probe.tolist())
    with pytest.raises(ValueError, match=r"^runtime eager disagrees with eager PyTorch on the probe images "
                                         r"\(cosine -?0\.\d{5} < 0\.999\); refusing to serve its vectors$"):
        Embedder.from_model_dir(tmp_path)


def test_images_are_embedded_in_batches_each_answered_in_order(eager, monkeypatch):
    blobs = [demo_image(pid) for pid in ("10109", "11043", "10140")]
    one = Embedder(eager)
    want = [one.embed_one(b) for b in blobs]
    batches = []
    real = eager.embed
    monkeypatch.setattr(eager, "embed", lambda images: batches.append(len(images)) or real(images))
    got = Embedder(eager, batch_size=2).embed_bytes(blobs[:1] + [b"junk"] + blobs[1:])
    assert batches == [2, 1] and got[1].error and got[1].vector is None  # the bad one takes no batch place
    for result, vector in zip([got[0], got[2], got[3]], want, strict=True):
        assert result.error is None and float(result.vector @ vector) > 0.9999 and result.colour is None


def test_an_embedder_refuses_a_photo_over_its_pixel_limit(eager):
    photo = demo_image("10109")  # 224 × 224
    results = Embedder(eager, max_pixels=224 * 224 - 1).embed_bytes([photo])
    assert results[0].error and "pixels" in results[0].error
    assert Embedder(eager, max_pixels=224 * 224).embed_bytes([photo])[0].error is None  # exactly the limit: served


def test_colour_is_computed_for_all_or_for_each_image(eager):
    blobs = [demo_image("10109"), demo_image("11043")]
    assert all(r.colour is not None for r in Embedder(eager).embed_bytes(blobs, colour=True))
    flags = Embedder(eager).embed_bytes(blobs, colour=[False, True])
    assert flags[0].colour is None and flags[1].colour is not None


def test_an_empty_batch_has_no_rows(eager):
    assert eager.embed([]).shape == (0, eager.dim) and eager.embed([]).dtype == np.float32
    assert Embedder(eager).embed_bytes([]) == []


def test_a_model_folder_runs_the_runtime_and_model_file_it_names(tmp_path, eager, monkeypatch):
    """The folder's runtime and model file reach the runtime loader (tests/test_archive.py runs a real one)."""
    import handlers.embedder as module

    real, asked = module.load_runtime, []

    def load(runtime, name, weights, model_file, device="cpu"):
        asked.append((runtime, model_file, device))
        return real("eager", name, weights, None, device)

    monkeypatch.setattr(module, "load_runtime", load)
    _model_dir(tmp_path, eager, runtime="onnxruntime", model_file="model.onnx")
    assert Embedder.from_model_dir(tmp_path, device="cpu").backbone_id == eager.backbone_id
    _model_dir(tmp_path, eager, runtime=..., model_file="")
    Embedder.from_model_dir(tmp_path)
    assert asked == [("onnxruntime", tmp_path / "model.onnx", "cpu"), ("eager", None, "cpu")]


def test_a_built_archive_is_opened_in_process(tmp_path, eager):
    import zipfile

    folder = tmp_path / "folder"
    folder.mkdir()
    _model_dir(folder, eager)
    with zipfile.ZipFile(tmp_path / "embedding.mar", "w") as mar:
        for path in folder.iterdir():
            mar.write(path, path.name)
    loaded = Embedder.from_archive(tmp_path / "embedding.mar")
    assert loaded.backbone_id == eager.backbone_id and loaded.runtime == "eager"
    # the unpacked archive stays while the embedder lives (its feature map loads the weights on first use) ...
    assert loaded.feature_map(demo_image("10109"), 64).shape == (eager.dim, 2, 2)
    unpacked = loaded.backbone.weights.parent
    assert unpacked.is_dir()
    del loaded
    import gc

    gc.collect()
    assert not unpacked.exists()  # ... and goes with it


def test_a_feature_map_has_a_cell_per_32_pixels_of_the_resized_photo(eager):
    from PIL import Image

    from tests.conftest import jpeg_bytes

    embedder = Embedder(eager)
    assert embedder.feature_map(jpeg_bytes(size=(200, 100)), 64).shape == (eager.dim, 2, 4)  # 128 × 64 px
    # the longer side is at most twice the shorter: a strip 10 times as wide is squeezed to 2
    assert embedder.feature_map(jpeg_bytes(size=(1000, 100)), 64).shape == (eager.dim, 2, 4)
    assert embedder.feature_map(jpeg_bytes(size=(100, 300)), 96).shape == (eager.dim, 6, 3)
    # the map's mean is the pooled vector, as the cells' language is the vector's
    photo = demo_image("10109")
    pooled = eager.feature_map(Image.open(__import__("io").BytesIO(photo)).convert("RGB"), 224).mean(axis=(1, 2))
    assert pooled.shape == (eager.dim,) and np.isfinite(pooled).all()


@pytest.mark.parametrize("side", [64, 640])
def test_a_feature_map_side_at_each_limit_is_made(eager, side):
    from tests.conftest import jpeg_bytes

    fmap = Embedder(eager).feature_map(jpeg_bytes(size=(64, 64)), side)
    assert fmap.shape == (eager.dim, side // 32, side // 32) and np.isfinite(fmap).all()


@pytest.mark.parametrize("side", [63, 641, 0, -64, 96.0, True, "96", None])
def test_a_feature_map_side_outside_the_limits_is_refused(eager, side):
    with pytest.raises(ValueError, match="64 to 640"):
        Embedder(eager).feature_map(demo_image("10109"), side)


def test_a_feature_map_of_something_that_is_not_an_image_is_an_image_error(eager):
    with pytest.raises(ImageError):
        Embedder(eager).feature_map(b"not an image", 96)


def test_the_probe_check_accepts_exactly_the_least_agreement(tmp_path, eager, monkeypatch):
    from handlers.runtimes import MIN_COSINE

    _model_dir(tmp_path, eager)
    monkeypatch.setattr("handlers.embedder.min_cosine", lambda a, b: MIN_COSINE)
    assert Embedder.from_model_dir(tmp_path).runtime == "eager"  # at the limit: served
    monkeypatch.setattr("handlers.embedder.min_cosine", lambda a, b: np.nextafter(MIN_COSINE, 0))
    with pytest.raises(ValueError, match="disagrees"):
        Embedder.from_model_dir(tmp_path)


def test_what_the_embedder_is_built_with(monkeypatch, tmp_path):
    """Its defaults (32 images a batch, the decoder's pixel limit, ``auto`` without download, the CPU) and
    that every setting reaches the runtime."""
    from modelio.imaging import DEFAULT_MAX_PIXELS

    runtimes, resolved = [], []
    monkeypatch.setattr("handlers.embedder.load_runtime", lambda *args: runtimes.append(args) or "runtime")
    monkeypatch.setattr("handlers.embedder.sha256_file", lambda path: "ab" * 32)
    monkeypatch.setattr("handlers.embedder.resolve_weights",
                        lambda *args: resolved.append(args) or (NAME, tmp_path / "w.pth"))
    made = Embedder.create()
    assert resolved == [("auto", None, False)] and runtimes == [("eager", NAME, tmp_path / "w.pth", None, "cpu")]
    assert made.batch_size == 32 and made.max_pixels == DEFAULT_MAX_PIXELS
    Embedder.create(NAME, tmp_path / "x.pth", download=True, device="cuda:1")
    assert resolved[-1] == (NAME, tmp_path / "x.pth", True) and runtimes[-1][-1] == "cuda:1"
    LoadedBackbone(NAME, tmp_path / "w.pth", "cuda:0", "openvino", tmp_path / "m.xml")
    assert runtimes[-1] == ("openvino", NAME, tmp_path / "w.pth", tmp_path / "m.xml", "cuda:0")


def test_a_single_image_that_is_not_one_says_why(eager):
    with pytest.raises(ImageError) as refused:
        Embedder(eager).embed_one(b"not an image")
    assert str(refused.value) == Embedder(eager).embed_bytes([b"not an image"])[0].error != ""


def test_photos_are_decoded_at_the_model_s_size_and_archives_opened_on_the_device_asked(eager, monkeypatch,
                                                                                      tmp_path):
    import handlers.embedder as module

    drafts, devices = [], []
    real = module.decode_image
    monkeypatch.setattr(module, "decode_image",
                        lambda blob, max_pixels, draft: drafts.append(draft) or real(blob, max_pixels, draft=draft))
    Embedder(eager).embed_bytes([demo_image("10109")])
    assert drafts == [256]  # a large JPEG is decoded reduced, never below what the model resizes to
    import zipfile

    with zipfile.ZipFile(tmp_path / "embedding.mar", "w") as mar:
        mar.writestr(BACKBONE_FILE, "{}")
    monkeypatch.setattr(Embedder, "from_model_dir",
                        classmethod(lambda cls, folder, device: devices.append(device) or Embedder(eager)))
    Embedder.from_archive(tmp_path / "embedding.mar", device="cuda:1")
    assert devices == ["cuda:1"]


def test_vectors_are_made_unit_length_whatever_their_norm(eager, monkeypatch):
    monkeypatch.setattr(eager, "runtime", lambda pixels: np.array([[0.03, 0.04], [0.0, 0.0], [30.0, 40.0]]))
    monkeypatch.setattr(eager, "preprocess", lambda images: images)
    out = eager.embed([None, None, None])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]], atol=1e-6)  # a zero row stays zero
