"""Runtimes (handlers/runtimes.py) and the export that feeds them (modelarchive/export.py), in-process.

Through a real TorchServe: tests/test_embedding_handler.py."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from handlers.backbones import SPECS, Normalized, resolve_weights
from handlers.runtimes import MIN_COSINE, Runtime, eager, load_runtime, min_cosine, openvino_config, probe_images
from modelarchive.export import ExportError, choose_runtime, export_onnx
from modelio.imaging import decode_image
from tests.conftest import DEMO_DIR

NAME = "efficientnet_lite0"


def real_images(n: int = 12) -> list[Image.Image]:
    return [decode_image(p.read_bytes()) for p in sorted((DEMO_DIR / "images").glob("*.jpg"))[::20][:n]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _, weights = resolve_weights(NAME)
    return weights, export_onnx(NAME, weights, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("size", [(224, 224), (300, 180), (181, 640), (1000, 999)])
def test_preprocess_equals_torchvision(name, size):
    """The one definition (PIL geometry, arithmetic inside the network) gives torchvision's own pipeline's
    input: what the backbone sees is the same whichever runtime runs it."""
    pre = SPECS[name].preprocess
    img = real_images(1)[0].resize(size)
    torchvision_way = transforms.Compose([
        transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode(pre.interpolation)),
        transforms.CenterCrop(pre.crop), transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    seen = Normalized(torch.nn.Identity(), pre)(torch.from_numpy(pre.batch([img])))  # what the backbone gets
    np.testing.assert_allclose(seen[0].numpy(), torchvision_way(img).numpy(), atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_optimised_runtimes_give_eager_vectors(exported, runtime):
    weights, onnx_file = exported
    batch = SPECS[NAME].preprocess.batch(real_images() + probe_images())
    run = load_runtime(runtime, NAME, weights, onnx_file)
    assert run.name == runtime
    assert min_cosine(run(batch), eager(NAME, weights)(batch)) >= MIN_COSINE


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtimes_serve_several_threads_at_once(exported, runtime):
    """The index build embeds chunks from several threads (catalog/build.py): one OpenVINO infer request
    runs one batch at a time ("Infer Request is busy"), so each thread gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    weights, onnx_file = exported
    batch = SPECS[NAME].preprocess.batch(real_images(4))
    run = load_runtime(runtime, NAME, weights, onnx_file)
    alone = run(batch)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: run(batch), range(12)))
    assert all(min_cosine(v, alone) >= 0.99999 for v in together)


@pytest.mark.parametrize("thread_count", [1, 2])
def test_openvino_leaves_its_threads_unpinned(exported, thread_count):
    """Pinned, every TorchServe worker's OpenVINO threads went to the same first cores: 2 workers × 1 thread
    shared one core of two (measured: docs/PERFORMANCE.md)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(exported[1]), "CPU", openvino_config("CPU", thread_count))
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == thread_count
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def test_missing_model_file_falls_back_to_eager_and_says_so(exported, tmp_path, caplog):
    weights, _ = exported
    with caplog.at_level(logging.WARNING):
        run = load_runtime("openvino", NAME, weights, tmp_path / "missing.onnx")
    assert run.name == "eager" and "falling back to eager" in caplog.text
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime("tensorflow", NAME, weights, None)


def test_auto_packs_the_fastest_runtime_that_matches_eager(exported, monkeypatch):
    weights, onnx_file = exported
    images = real_images(4)
    choice = choose_runtime("auto", NAME, weights, onnx_file, images)
    assert set(choice.images_per_s) == {"eager", "onnxruntime", "openvino"} and not choice.refused
    assert choice.runtime == max(choice.images_per_s, key=choice.images_per_s.get)
    # A runtime whose vectors drift from eager is refused, whatever its speed.
    import handlers.runtimes as runtimes

    real = runtimes.openvino
    monkeypatch.setattr(runtimes, "openvino", lambda f, d="cpu": (lambda b: real(f, d)(b)[:, ::-1].copy()))
    monkeypatch.setattr("modelarchive.export.load_runtime", runtimes.load_runtime)
    choice = choose_runtime("auto", NAME, weights, onnx_file, images)
    assert "openvino" in choice.refused and choice.runtime != "openvino"
    with pytest.raises(ExportError, match="cosine to eager"):
        choose_runtime("openvino", NAME, weights, onnx_file, images)


def test_min_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert min_cosine(a, a * 3) == pytest.approx(1.0)
    assert min_cosine(a, np.array([[1.0, 1.0], [0.0, 1.0]])) == pytest.approx(np.sqrt(0.5))
    assert Runtime("x", lambda b: b * 2)(np.ones(2)).tolist() == [2.0, 2.0]


def test_large_jpeg_decodes_at_reduced_size_never_below_the_draft():
    buf = io.BytesIO()
    real_images(1)[0].resize((2400, 1800)).save(buf, format="JPEG", quality=90)
    full = decode_image(buf.getvalue())
    small = decode_image(buf.getvalue(), draft=256)
    assert full.size == (2400, 1800) and small.size == (600, 450)  # 1/4 scale: 1/8 would leave 225 < 256
    assert min(decode_image(buf.getvalue(), draft=300).size) >= 300
    png = io.BytesIO()
    real_images(1)[0].resize((800, 600)).save(png, format="PNG")
    assert decode_image(png.getvalue()).size == (800, 600)
    assert decode_image(png.getvalue(), draft=256).size == (400, 300)  # other formats: shrunk after decoding


def test_shrinking_a_large_png_before_the_model_keeps_its_vector(local_embedder):
    """What the model sees of a large PNG shrunk right after decoding (box filter, whole factor) is what it saw
    of the full-size decode: the same vector within the runtimes' own tolerance, so the vectors' meaning (and
    the backbone id) is unchanged."""
    for image in real_images(3):
        png = io.BytesIO()
        image.resize((1200, 900)).save(png, format="PNG")
        full, shrunk = decode_image(png.getvalue()), decode_image(png.getvalue(), draft=256)
        assert shrunk.size == (400, 300)
        a, b = local_embedder.backbone.embed([full])[0], local_embedder.backbone.embed([shrunk])[0]
        assert float(a @ b) >= 0.99


@pytest.mark.parametrize(("env", "expected"), [
    ({"PHOTO_THREADS": "1"}, 1), ({"PHOTO_THREADS": "3"}, 3),
    ({"PHOTO_THREADS": "0", "OMP_NUM_THREADS": "2"}, 2),  # 0 is not a thread count: the next source decides
    ({"PHOTO_THREADS": "-1", "OMP_NUM_THREADS": "2"}, 2), ({"PHOTO_THREADS": "two", "OMP_NUM_THREADS": "2"}, 2),
    ({"OMP_NUM_THREADS": "1"}, 1), ({"PHOTO_THREADS": "0"}, None), ({}, None),
])
def test_thread_count_from_its_variables_or_all_cores(monkeypatch, env, expected):
    from handlers.runtimes import threads

    for var in ("PHOTO_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert threads() == (expected if expected is not None else (os.cpu_count() or 1))
