"""SSRF guards for image URLs (catalog/safe_http.py): every refusal is exact and happens before connecting."""

from __future__ import annotations

import pytest

from catalog import safe_http
from catalog.safe_http import UnsafeURL, check_url, safe_get
from tests.conftest import demo_image


def fake_dns(table):
    def resolve(host, port):
        if host in table:
            return table[host]
        return safe_http.system_resolve(host, port)  # IP literals in any notation
    return resolve


REFUSED = [
    ("file:///etc/passwd", "must start with http"),
    ("gopher://example.com/", "must start with http"),
    ("http://user:pw@example.com/a.jpg", "credentials"),
    ("http:///a.jpg", "no host"),
    ("http://127.0.0.1/a.jpg", "loopback"),
    ("http://2130706433/a.jpg", "loopback"),  # decimal
    ("http://0177.0.0.1/a.jpg", "loopback"),  # octal
    ("http://0x7f.0.0.1/a.jpg", "loopback"),  # hex
    ("http://127.1/a.jpg", "loopback"),  # short form
    ("http://[::1]/a.jpg", "loopback"),
    ("http://[::ffff:127.0.0.1]/a.jpg", "loopback"),  # IPv4-mapped IPv6
    ("http://0.0.0.0/a.jpg", "unspecified"),
    ("http://[::]/a.jpg", "unspecified"),
    ("http://10.1.2.3/a.jpg", "private"),
    ("http://192.168.0.10/a.jpg", "private"),
    ("http://172.16.5.5/a.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://[fd00:ec2::254]/", "private"),  # AWS IPv6 metadata
    ("http://224.0.0.1/a.jpg", "multicast"),
    ("http://localhost.test/a.jpg", "loopback"),  # a DNS name that resolves to loopback
    ("http://rebind.test/a.jpg", "private"),  # one public and one private answer
    ("http://nowhere.invalid/a.jpg", "cannot resolve"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local"),
    ("http://example.com:99999/a.jpg", "malformed"),
]
DNS = fake_dns({"localhost.test": ["127.0.0.1"], "loop3.test": ["127.0.0.3"],
                "rebind.test": ["93.184.216.34", "10.0.0.7"],
                "nowhere.invalid": []})


@pytest.mark.parametrize("url, reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_before_any_connection(url, reason):
    with pytest.raises(UnsafeURL, match=reason):
        check_url(url, allow_private=False, resolve=DNS)


def test_public_address_is_pinned():
    found = check_url("https://shop.test/img.jpg", False, fake_dns({"shop.test": ["93.184.216.34"]}))
    assert found == ("https", "shop.test", 443, "93.184.216.34")


def test_fetch_connects_to_the_checked_address(http_server, monkeypatch):
    """The name is looked up once; the connection goes to that address with the original Host header."""
    url = http_server.add("/a.jpg", demo_image("10109"))
    port = int(url.split(":")[2].split("/")[0])
    lookups = []

    def resolve(host, p):
        lookups.append(host)
        return ["127.0.0.1"]

    data = safe_get(f"http://shop.test:{port}/a.jpg", 10_000_000, 5, allow_private=True, resolve=resolve)
    assert data == demo_image("10109") and lookups == ["shop.test"]


def test_redirects_checked_and_bounded(http_server):
    http_server.add("/final.jpg", demo_image("10109"))
    http_server.add("/r1", b"", status=302, Location="/final.jpg")
    assert safe_get(http_server.url + "/r1", 10_000_000, 5, allow_private=True) == demo_image("10109")
    for i in range(5):
        http_server.add(f"/loop{i}", b"", status=302, Location=f"/loop{i + 1}")
    with pytest.raises(UnsafeURL, match="redirected more than 3 times"):
        safe_get(http_server.url + "/loop0", 10_000_000, 5, allow_private=True)


@pytest.mark.parametrize("location, reason", [("http://169.254.169.254/latest/", "link-local"),
                                              ("http://127.0.0.2:9/x.jpg", "loopback"),
                                              ("http://loop3.test/x.jpg", "loopback")])
def test_every_redirect_hop_is_checked(http_server, location, reason):
    """Only the test server's own address is allowed; a redirect elsewhere is refused before connecting."""
    http_server.add("/hop", b"", status=302, Location=location)
    with pytest.raises(UnsafeURL, match=reason):
        safe_get(http_server.url + "/hop", 10_000_000, 5, resolve=DNS, allow_networks=("127.0.0.1/32",))


def test_size_and_type_limits(http_server):
    big = http_server.add("/big.jpg", b"x" * 300_000)
    with pytest.raises(UnsafeURL, match="larger than") as err:
        safe_get(big, 100_000, 5, allow_private=True)
    assert err.value.status == 413
    page = http_server.add("/page", b"<html></html>", content_type="text/html")
    with pytest.raises(UnsafeURL, match="not an image"):
        safe_get(page, 100_000, 5, allow_private=True)
