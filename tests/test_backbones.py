"""Backbone registry and weight resolution (handlers/backbones.py)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from handlers import backbones
from handlers.backbones import WeightsUnavailable, resolve_weights
from handlers.embedder import Embedder
from tests.conftest import demo_image, free_port


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


def test_failed_download_is_a_clear_error(empty_hub, monkeypatch):
    # A closed port on loopback stands in for "no internet": nothing leaves the machine.
    monkeypatch.setattr(backbones, "RESNET18_URL", f"http://127.0.0.1:{free_port()}/resnet18-f37072fd.pth")
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
