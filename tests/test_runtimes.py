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


# --------------------------------------------------------------------------- each runtime's settings, without it


class FakeOrt:
    """A stand-in ``onnxruntime`` module: records the session it is asked for."""

    class GraphOptimizationLevel:
        ORT_ENABLE_ALL = "all"

    class SessionOptions:
        def __init__(self) -> None:
            self.entries: dict[str, str] = {}

        def add_session_config_entry(self, key: str, value: str) -> None:
            self.entries[key] = value

    def __init__(self, available: list[str]) -> None:
        self.available, self.sessions = available, []

    def get_available_providers(self) -> list[str]:
        return self.available

    def InferenceSession(self, path, options, providers):  # noqa: N802 - onnxruntime's name
        ort = self

        class Session:
            def get_inputs(self):
                return [type("Input", (), {"name": "pixels"})(), type("Input", (), {"name": "other"})()]

            def run(self, outputs, feed):
                ort.runs.append((outputs, feed))
                return [feed["pixels"] * 2, "second output"]

        self.sessions.append((path, options, providers))
        self.runs = []
        return Session()


@pytest.fixture
def fake_ort(monkeypatch):
    import sys

    ort = FakeOrt(["TensorrtExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setenv("PHOTO_THREADS", "3")
    return ort


def test_onnxruntime_runs_all_optimisations_on_our_threads_without_spinning(fake_ort, tmp_path):
    from handlers.runtimes import onnxruntime

    run = onnxruntime(tmp_path / "m.onnx")
    ((path, options, providers),) = fake_ort.sessions
    assert path == str(tmp_path / "m.onnx") and providers == ["CPUExecutionProvider"]
    assert options.intra_op_num_threads == 3 and options.graph_optimization_level == "all"
    assert options.entries == {"session.intra_op.allow_spinning": "0"}
    assert run(np.ones(2)).tolist() == [2.0, 2.0]
    assert fake_ort.runs[0][0] is None and list(fake_ort.runs[0][1]) == ["pixels"]


@pytest.mark.parametrize(("available", "expected"), [
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CPUExecutionProvider"], ["CPUExecutionProvider"]),
])
def test_onnxruntime_on_a_gpu_uses_tensorrt_then_cuda_where_built_in(fake_ort, tmp_path, available, expected):
    from handlers.runtimes import onnxruntime

    fake_ort.available = available
    onnxruntime(tmp_path / "m.onnx", device="cuda:1")
    assert fake_ort.sessions[0][2] == expected


@pytest.mark.parametrize("package", ["onnxruntime", "openvino"])
def test_a_runtime_that_is_not_installed_is_unavailable_and_says_how_to_get_it(monkeypatch, tmp_path, package):
    import sys

    from handlers import runtimes

    monkeypatch.setitem(sys.modules, package, None)  # import fails as it does where the package is missing
    with pytest.raises(runtimes.RuntimeUnavailable) as caught:
        getattr(runtimes, package)(tmp_path / "m.onnx")
    assert str(caught.value) == f"{package} is not installed (pip install {package})"
    assert isinstance(caught.value.__cause__, ImportError)


class FakeOv:
    """A stand-in ``openvino`` module: one compiled model, an infer request per thread, a reused output."""

    def __init__(self) -> None:
        self.compiled, self.requests = [], []
        fake = self

        class Request:
            def __init__(self) -> None:
                self.out = np.zeros(2)

            def infer(self, feed):
                self.out[:] = feed[0]  # the same buffer every time, as OpenVINO's request does
                return {0: self.out}

        class Compiled:
            def create_infer_request(self):
                fake.requests.append(Request())
                return fake.requests[-1]

        class Core:
            def compile_model(self, path, device, config):
                fake.compiled.append((path, device, config))
                return Compiled()

        self.Core = Core


@pytest.mark.parametrize(("device", "name"), [("cpu", "CPU"), ("cuda", "GPU"), ("cuda:0", "GPU")])
def test_openvino_compiles_for_the_device_with_our_config(monkeypatch, tmp_path, device, name):
    import sys

    from handlers.runtimes import openvino

    ov = FakeOv()
    monkeypatch.setitem(sys.modules, "openvino", ov)
    monkeypatch.setenv("PHOTO_THREADS", "2")
    openvino(tmp_path / "m.xml", device)
    assert ov.compiled == [(str(tmp_path / "m.xml"), name, openvino_config(name, 2))]


def test_openvino_keeps_one_request_per_thread_and_copies_its_output(monkeypatch, tmp_path):
    import sys
    import threading

    from handlers.runtimes import openvino

    ov = FakeOv()
    monkeypatch.setitem(sys.modules, "openvino", ov)
    run = openvino(tmp_path / "m.xml")
    first = run(np.array([1.0, 2.0]))
    second = run(np.array([3.0, 4.0]))
    assert first.tolist() == [1.0, 2.0] and second.tolist() == [3.0, 4.0]  # not overwritten by the next batch
    assert len(ov.requests) == 1
    other = threading.Thread(target=run, args=(np.zeros(2),))
    other.start()
    other.join()
    assert len(ov.requests) == 2


@pytest.mark.parametrize(("device", "expected"), [
    ("CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "4",
             "ENABLE_CPU_PINNING": False}),
    ("GPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}),
])
def test_openvinos_config_per_device(device, expected):
    assert openvino_config(device, 4) == expected


def test_load_runtime_picks_the_loader_and_falls_back_to_eager_when_it_cannot(monkeypatch, tmp_path, caplog):
    from handlers import runtimes

    calls = []
    monkeypatch.setattr(runtimes, "eager", lambda name, weights, device: calls.append(("eager", name, device)) or 1)
    monkeypatch.setattr(runtimes, "onnxruntime", lambda f, device: calls.append(("onnxruntime", f, device)) or 2)

    def unavailable(f, device):
        raise runtimes.RuntimeUnavailable("no GPU plugin")

    monkeypatch.setattr(runtimes, "openvino", unavailable)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    assert load_runtime("eager", "net", tmp_path / "w.pt", model, "cuda") == Runtime("eager", 1)
    assert load_runtime("onnxruntime", "net", tmp_path / "w.pt", str(model), "cuda") == Runtime("onnxruntime", 2)
    assert calls == [("eager", "net", "cuda"), ("onnxruntime", model, "cuda")]
    with caplog.at_level(logging.WARNING, logger="handlers.runtimes"):
        assert load_runtime("openvino", "net", tmp_path / "w.pt", model).name == "eager"
        assert load_runtime("onnxruntime", "net", tmp_path / "w.pt", None).name == "eager"
        assert load_runtime("openvino", "net", tmp_path / "w.pt", tmp_path).name == "eager"  # a folder: no file
    assert [r.getMessage() for r in caplog.records] == [
        "runtime openvino unavailable (no GPU plugin); falling back to eager PyTorch",
        "runtime onnxruntime unavailable (no exported model file for onnxruntime); falling back to eager PyTorch",
        "runtime openvino unavailable (no exported model file for openvino); falling back to eager PyTorch"]
    assert calls[-1] == ("eager", "net", "cpu")
    with pytest.raises(ValueError, match=r"^unknown runtime 'tf'; choose one of eager, onnxruntime, openvino$"):
        load_runtime("tf", "net", tmp_path / "w.pt", model)


def test_the_probe_pictures_are_fixed():
    """Their pixels, recomputed here in float64: within one level of grey (sin and cos round per CPU), and the
    same on average: a change would make every archive's stored probe vectors disagree."""
    y, x = np.mgrid[0:240, 0:320].astype(np.float64)
    expected = [np.stack([127 + 120 * np.sin(x / 9), 127 + 120 * np.cos(y / 13), (x + y) % 256], axis=2),
                np.stack([(np.hypot(x - 160, y - 120) * 3) % 256, x * 255 / 320, 255 - y * 255 / 240], axis=2)]
    pictures = probe_images()
    assert [im.size for im in pictures] == [(320, 240)] * 2 and [im.mode for im in pictures] == ["RGB"] * 2
    for picture, want in zip(pictures, expected, strict=True):
        got = np.asarray(picture, dtype=np.float64)
        diff = np.abs(got - np.floor(want).astype(np.uint8))
        assert diff.max() <= 1 and diff.mean() < 0.01


def test_min_cosine_of_zero_rows_and_of_nothing():
    assert min_cosine(np.zeros((1, 2)), np.ones((1, 2))) == 0.0
    assert min_cosine(np.zeros((0, 2)), np.zeros((0, 2))) == 1.0
    assert min_cosine(np.array([[1e-13, 0.0]]), np.array([[1.0, 0.0]])) == pytest.approx(1e-1)
    assert min_cosine(np.array([[1.0, 0.0]]), np.array([[1e-13, 0.0]])) == pytest.approx(1e-1)  # either side


def test_the_runtime_constants():
    from handlers import runtimes

    assert (runtimes.RUNTIMES, runtimes.ONNX_FILE, MIN_COSINE) == (("eager", "onnxruntime", "openvino"),
                                                                   "model.onnx", 0.999)


def test_without_a_known_core_count_one_thread(monkeypatch):
    from handlers import runtimes

    for var in ("PHOTO_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtimes.os, "cpu_count", lambda: None)
    assert runtimes.threads() == 1


def test_eager_runs_the_network_and_its_input_on_the_device_asked(monkeypatch, tmp_path):
    import handlers.backbones

    seen = {}

    class Network:
        def to(self, device):
            seen["network"] = device
            return self

        def __call__(self, x):
            seen["input"] = x.device.type
            return torch.ones(len(x), 2, dtype=torch.float16)

    monkeypatch.setattr(handlers.backbones, "build_network", lambda name, weights: Network())
    out = eager("net", tmp_path / "w.pt", device="meta")(np.zeros((3, 4, 4, 3), np.uint8))
    assert seen == {"network": "meta", "input": "meta"}
    assert out.dtype == np.float32 and out.shape == (3, 2)
