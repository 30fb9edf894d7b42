"""Prometheus metrics on /metrics (gateway/metrics.py), through the Flask app."""

from __future__ import annotations

import io
import re

import pytest
import requests

from tests.conftest import ADMIN, demo_image


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == wanted:
            return float(m.group(2))
    return 0.0


def test_requests_embedding_and_index_are_counted(client):
    before = client.get("/metrics", environ_overrides=ADMIN).get_data(as_text=True)
    route = "/api/search"
    ok = client.post(route, data={"file": (io.BytesIO(demo_image("10109")), "q.jpg")},
                     content_type="multipart/form-data")
    bad = client.post(route, data={"file": (io.BytesIO(b"nope"), "q.jpg")}, content_type="multipart/form-data")
    assert (ok.status_code, bad.status_code) == (200, 400)
    after = client.get("/metrics", environ_overrides=ADMIN)
    text = after.get_data(as_text=True)
    assert after.status_code == 200 and after.mimetype == "text/plain"
    for status in ("200", "400"):
        key = {"route": route, "method": "POST", "status": status}
        assert sample(text, "photo_requests_total", **key) == sample(before, "photo_requests_total", **key) + 1
    assert sample(text, "photo_request_seconds_count", route=route, status="200") >= 1
    assert sample(text, "photo_embedding_seconds_count") >= 1  # the model call of the good search only
    assert sample(text, "photo_index_products") == 48
    version = client.get("/readyz", environ_overrides=ADMIN).get_json()["index_version"]
    assert f'version="{version}"' in text and "photo_index_info{" in text


def test_refused_urls_are_counted_by_status(client):
    before = client.get("/metrics", environ_overrides=ADMIN).get_data(as_text=True)
    resp = client.post("/api/search", json={"image_url": "http://127.0.0.1:9/x.jpg"})
    assert resp.status_code == 400
    text = client.get("/metrics", environ_overrides=ADMIN).get_data(as_text=True)
    assert sample(text, "photo_url_fetch_errors_total", status="400") == sample(
        before, "photo_url_fetch_errors_total", status="400") + 1


@pytest.mark.integration
def test_metrics_add_up_every_gunicorn_worker(start_gateway, demo_index, torchserve):
    """Under ``python -m gateway`` (2 workers) /metrics counts the requests whichever worker served them."""
    gw = start_gateway(INDEX_URI=str(demo_index), TORCHSERVE_URL=torchserve.url)
    for _ in range(6):
        resp = requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", demo_image("10109"))}, timeout=60)
        assert resp.status_code == 200
    text = requests.get(f"{gw.admin_url}/metrics", timeout=10).text
    assert sample(text, "photo_requests_total", route="/api/search", method="POST", status="200") == 6
    assert sample(text, "photo_embedding_seconds_count") == 6
    # the public port: no metrics, and readiness without its reasons, whatever the request claims
    spoof = {"Host": f"127.0.0.1:{gw.admin_port}", "X-Forwarded-Port": str(gw.admin_port)}
    assert requests.get(f"{gw.url}/metrics", headers=spoof, timeout=10).status_code == 404
    assert requests.get(f"{gw.url}/readyz", headers=spoof, timeout=10).json() == {"ready": True}
    assert requests.get(f"{gw.admin_url}/readyz", timeout=10).json()["index_version"]


def test_an_unknown_method_is_counted_as_other_not_as_a_new_series(client):
    """Any 3–20 letter method token reaches the app; each new one must not become a permanent label value."""
    other = {"route": "unmatched", "method": "OTHER", "status": "405"}
    metrics = client.get("/metrics", environ_overrides=ADMIN).get_data(as_text=True)
    before = sample(metrics, "photo_requests_total", **other)
    for method in ("ZZ0002XYZ", "PROPFIND"):
        assert client.open("/healthz", method=method).status_code == 405
    text = client.get("/metrics", environ_overrides=ADMIN).get_data(as_text=True)
    assert "ZZ0002XYZ" not in text and "PROPFIND" not in text
    assert sample(text, "photo_requests_total", **other) == before + 2


def test_metrics_and_readiness_details_are_served_on_the_admin_listener_only(client):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", environ_overrides=ADMIN).status_code == 200
    public = client.get("/readyz")
    assert public.status_code == 200 and public.get_json() == {"ready": True}
    details = client.get("/readyz", environ_overrides=ADMIN).get_json()
    assert details["ready"] is True and details["reason"] == "ready" and details["index_version"]


class FakeSocket:
    def __init__(self, port: int) -> None:
        self.port = port

    def getsockname(self):
        return ("127.0.0.1", self.port)


@pytest.mark.parametrize(("admin_port", "environ", "tagged"), [
    (9090, {"gunicorn.socket": FakeSocket(9090)}, True),
    (9090, {"gunicorn.socket": FakeSocket(5000)}, False),
    (9090, {"gunicorn.socket": FakeSocket(5000), "photo.admin_listener": True}, False),  # set before us: dropped
    (9090, {}, False),  # no socket (Lambda, a test client)
    (0, {"gunicorn.socket": FakeSocket(0)}, False),  # no admin listener at all
])
def test_only_requests_accepted_on_the_admin_port_are_tagged(admin_port, environ, tagged):
    from gateway.listener import ADMIN as KEY
    from gateway.listener import tag_admin_requests

    seen = {}

    def app(env, start_response):
        seen.update(env)
        return [b""]

    tag_admin_requests(app, admin_port)(dict(environ), lambda *a: None)
    assert (seen.get(KEY) is True) is tagged


def test_the_gateway_binds_the_admin_port_beside_the_public_one_and_never_on_it():
    import argparse

    from gateway.__main__ import binds, main
    from gateway.config import Config

    args = argparse.Namespace(host="0.0.0.0", port=5000)
    assert binds(args, Config()) == ["0.0.0.0:5000"]
    assert binds(args, Config(gateway_admin_port=9090)) == ["0.0.0.0:5000", "0.0.0.0:9090"]
    assert binds(argparse.Namespace(host="::", port=5000), Config(gateway_admin_port=9090)) == ["[::]:5000",
                                                                                                  "[::]:9090"]
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"GATEWAY_ADMIN_PORT": "5000", "GATEWAY_PORT": "5000"}), \
            pytest.raises(SystemExit, match="GATEWAY_ADMIN_PORT=5000 is the public port"):
        main([])
