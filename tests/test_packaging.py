"""pyproject.toml: installs by role (a gateway-only install has no torch), pins equal to the tested ones, and
console entry points that exist."""

from __future__ import annotations

import importlib
import re
import tomllib

from devtools.process import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\[\]-]+)==([^\s#]+)", text, re.M)}


def extra(name: str) -> dict[str, str]:
    return pins("\n".join(PROJECT["optional-dependencies"][name]))


def test_the_gateway_role_is_the_gateway_image_and_has_no_torch():
    image = pins((REPO / "infra" / "docker" / "requirements-gateway.txt").read_text())
    assert extra("gateway") == image
    assert not {"torch", "torchvision", "timm", "torchserve", "pandas"} & set(extra("gateway"))
    assert "photo[gateway]" in PROJECT["optional-dependencies"]["indexer"]


def test_every_pin_of_every_role_is_the_tested_one():
    tested = pins((REPO / "requirements.txt").read_text()) | pins((REPO / "requirements-dev.txt").read_text())
    for role in PROJECT["optional-dependencies"]:
        for name, version in extra(role).items():
            assert tested.get(name) == version, f"[{role}] {name}=={version}, requirements have {tested.get(name)}"
    covered = set().union(*(extra(role) for role in PROJECT["optional-dependencies"]))
    assert set(pins((REPO / "requirements.txt").read_text())) <= covered  # every runtime pin has a role


def test_the_console_entry_points_exist():
    scripts = PROJECT["scripts"]
    assert set(scripts) == {"photo-gateway", "photo-build-index", "photo-index"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
