"""SSRF guards for image URLs (safeio/safe_http.py): every refusal is exact and happens before connecting."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
import time

import pytest

from safeio import safe_http
from safeio.safe_http import UnsafeURL, address_problem, check_url, safe_get
from tests.conftest import REPO, demo_image


def fake_dns(table):
    def resolve(host, port):
        if host in table:
            return table[host]
        # IP literals in any notation, as the system reads them; a name not in the table never reaches DNS
        # (no network here, and a lookup that waits would only slow the test down).
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
        return [info[4][0] for info in infos]
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


class DripServer:
    """Answers 200 with an image header, then one body byte every ``gap`` seconds, ``total`` bytes in all:
    the slow-loris answer that per-read timeouts never stop. Loopback, bounded, stops by itself."""

    def __init__(self, gap: float, total: int) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/drip.jpg"
        self.gap, self.total = gap, total
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % self.total)
            try:
                for _ in range(self.total):
                    conn.sendall(b"x")
                    time.sleep(self.gap)
            except OSError:
                pass  # the client hung up: what the deadline is for

    def close(self) -> None:
        self.sock.close()


def test_a_dripping_server_is_cut_off_at_the_deadline():
    """Each byte arrives well within any read timeout; the fetch as a whole still ends at its deadline."""
    import time

    server = DripServer(gap=0.1, total=200)  # 20 s of dripping
    started = time.monotonic()
    with pytest.raises(UnsafeURL, match="took longer than 1s") as err:
        safe_get(server.url, 10_000, timeout=1.0, allow_private=True)
    assert err.value.status == 504 and time.monotonic() - started < 5  # not the 20 s the server wanted
    server.close()


def test_a_slow_answer_inside_the_deadline_is_read_whole():
    server = DripServer(gap=0.05, total=6)  # 0.3 s in all
    assert safe_get(server.url, 10_000, timeout=5.0, allow_private=True) == b"xxxxxx"
    server.close()


def test_a_slow_lookup_counts_against_the_deadline():
    import time

    def slow_dns(host, port):
        time.sleep(3)
        return ["93.184.216.34"]

    started = time.monotonic()
    with pytest.raises(UnsafeURL, match="looking up") as err:
        safe_get("http://slow.test/a.jpg", 10_000, timeout=0.5, resolve=slow_dns)
    assert err.value.status == 504 and time.monotonic() - started < 2.5


def test_proxy_variables_are_ignored(http_server, monkeypatch):
    image = next((REPO / "data" / "demo" / "images").glob("*.jpg")).read_bytes()
    url = http_server.add("/a.jpg", image)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert safe_get(url, 10_000_000, timeout=5, allow_private=True) == image


def test_international_names_are_looked_up_as_idna():
    seen = []

    def dns(host, port):
        seen.append(host)
        return ["10.0.0.1"]

    with pytest.raises(UnsafeURL, match="private"):
        check_url("http://bücher.test/a.jpg", False, dns)
    assert seen == ["xn--bcher-kva.test"]
    with pytest.raises(UnsafeURL, match="not a valid host name"):
        check_url("http://" + "a" * 64 + ".test/a.jpg", False, dns)  # a label over 63 characters


@pytest.mark.parametrize(("address", "reason"), [
    ("fec0::1", "site-local"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo carrying 10.0.0.1 as the client
    ("2001:0:4136:e378:8000:63bf:a247:27dd", "Teredo"),  # Teredo carrying public addresses only
])
def test_site_local_and_teredo_are_refused(address, reason):
    with pytest.raises(UnsafeURL, match=reason):
        check_url("http://x.test/a.jpg", False, lambda host, port: [address])


def test_an_ipv6_literal_is_bracketed_in_the_host_header():
    """``Host: ::1:8080`` is ambiguous and refused by servers; it must be ``[::1]:8080``."""
    server = OneAnswer(OK_IMAGE, b"ok", host="::1")
    assert safe_get(server.url, 100, timeout=5, allow_private=True) == b"ok"
    assert f"Host: [::1]:{server.port}\r\n".encode() in server.seen[0]


def test_a_forked_process_still_resolves():
    # gunicorn --preload and forking runners copy the lookup pool without its threads: without a pool of its
    # own the child waited forever (no deadline) or answered 504 (with one) for every image URL.
    dns = fake_dns({"shop.test": ["93.184.216.34"]})
    assert check_url("http://shop.test/a.jpg", False, dns)[3] == "93.184.216.34"  # the parent's pool has threads
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if both lookups answer
        signal.alarm(10)
        ok = check_url("http://shop.test/a.jpg", False, dns)[3] == "93.184.216.34"
        ok = ok and check_url("http://shop.test/a.jpg", False, dns, deadline=safe_http.Deadline(5))[1] == "shop.test"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class OneAnswer:
    """Answers one request with ``head`` and ``body`` as given, then closes (no Content-Length unless in head);
    ``seen`` holds the request it read."""

    def __init__(self, head: bytes, body: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/a.jpg"
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, args=(head, body), daemon=True).start()

    def _serve(self, head: bytes, body: bytes) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.seen.append(conn.recv(65536))
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + head + b"\r\n" + body)
            except OSError:
                pass  # the client stopped reading at its cap
        self.sock.close()


OK_IMAGE = b"Content-Type: image/jpeg\r\nContent-Length: 2\r\n"


MIB = 1024 * 1024


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_the_byte_cap_admits_exactly_its_value(declared):
    for size, ok in ((MIB, True), (MIB + 1, False)):
        head = b"Content-Type: image/jpeg\r\n" + (b"Content-Length: %d\r\n" % size if declared else b"")
        server = OneAnswer(head, b"x" * size)
        if ok:
            assert len(safe_get(server.url, MIB, timeout=5, allow_private=True)) == size
            continue
        with pytest.raises(UnsafeURL) as refused:
            safe_get(server.url, MIB, timeout=5, allow_private=True)
        assert (str(refused.value), refused.value.status) == ("image URL is larger than 1 MB", 413)


def test_three_redirects_are_followed_and_a_fourth_is_refused(http_server):
    http_server.add("/end.jpg", b"img")
    for i in range(4):
        http_server.add(f"/hop{i}", b"", status=302, Location=f"/hop{i + 1}" if i < 3 else "/end.jpg")
    assert safe_get(http_server.url + "/hop1", 100, 5, allow_private=True) == b"img"  # 3 redirects
    with pytest.raises(UnsafeURL) as refused:
        safe_get(http_server.url + "/hop0", 100, 5, allow_private=True)  # 4 redirects
    assert str(refused.value) == "image URL redirected more than 3 times"


@pytest.mark.parametrize(("content_type", "refusal"), [
    ("image/jpeg; charset=binary", None), ("IMAGE/PNG", None), ("", None),
    ("text/html; charset=utf-8", "image URL is not an image (content-type text/html)"),
])
def test_content_types_on_both_sides(http_server, content_type, refusal):
    url = http_server.add("/x", b"img", content_type=content_type)
    if refusal is None:
        assert safe_get(url, 100, 5, allow_private=True) == b"img"
        return
    with pytest.raises(UnsafeURL) as refused:
        safe_get(url, 100, 5, allow_private=True)
    assert str(refused.value) == refusal


def test_an_error_answer_is_named(http_server):
    with pytest.raises(UnsafeURL) as refused:
        safe_get(http_server.url + "/missing.jpg", 100, 5, allow_private=True)
    assert str(refused.value) == "image URL answered HTTP 404"


@pytest.mark.parametrize(("address", "reason"), [
    ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
    ("2002:a9fe:a9fe::", "link-local"),  # 6to4 around the metadata address
    ("2002:a00:1::", "private"),
    ("64:ff9b::a00:1", "reserved"),  # NAT64 around 10.0.0.1
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("100.64.0.1", "non-public"),  # carrier-grade NAT
])
def test_each_wrapped_form_of_a_private_address_is_refused(address, reason):
    with pytest.raises(UnsafeURL) as refused:
        check_url("http://x.test/a.jpg", False, lambda host, port: [address])
    shown = ipaddress.ip_address(address)  # in its normal form
    assert str(refused.value) == f"image URL host 'x.test' resolves to a {reason} address ({shown}); refused"


@pytest.mark.parametrize("address", ["::ffff:93.184.216.34", "2002:5db8:d822::", "93.184.216.34"])
def test_the_same_wrappings_of_a_public_address_pass(address):
    assert check_url("http://x.test/a.jpg", False, lambda host, port: [address])[3] == address


@pytest.mark.parametrize(("url", "message"), [
    ("http://example.com:99999/a.jpg", "image URL is malformed"),
    ("ftp://example.com/a.jpg", "image URL must start with http:// or https://"),
    ("http://user@example.com/a.jpg", "image URL must not contain credentials"),  # a name alone is enough
    ("http://:pw@example.com/a.jpg", "image URL must not contain credentials"),
    ("http:///a.jpg", "image URL has no host"),
    ("http://nowhere.invalid/a.jpg", "cannot resolve host 'nowhere.invalid'"),
    ("http://unknown.test/a.jpg", "cannot resolve host 'unknown.test'"),  # the lookup fails
    ("http://" + "a" * 100 + ".test/", f"image URL host {'a' * 80!r} is not a valid host name"),
])
def test_refusals_word_for_word(url, message):
    with pytest.raises(UnsafeURL) as refused:
        check_url(url, allow_private=False, resolve=DNS)
    assert str(refused.value) == message and refused.value.status == 400


@pytest.mark.parametrize(("url", "port"), [("http://shop.test/a.jpg", 80), ("https://shop.test/a.jpg", 443),
                                           ("http://shop.test:8080/a.jpg", 8080)])
def test_the_default_port_follows_the_scheme(url, port):
    seen = []
    check_url(url, False, lambda host, p: seen.append(p) or ["93.184.216.34"])
    assert seen == [port]


def test_a_scoped_ipv6_answer_is_judged_and_pinned_without_its_zone():
    with pytest.raises(UnsafeURL, match=r"link-local address \(fe80::1\)"):
        check_url("http://x.test/", False, lambda host, port: ["fe80::1%eth0"])
    assert check_url("http://x.test/", False, lambda host, port: ["2606:2800::1%eth0"])[3] == "2606:2800::1"


def test_the_request_names_the_host_and_the_client():
    """Connected to the pinned address, the request still says which host and path it wants, and who asks."""
    server = OneAnswer(OK_IMAGE, b"ok")
    url = f"http://shop.test:{server.port}?size=big#frag"
    assert safe_get(url, 100, timeout=5, allow_private=True, resolve=lambda h, p: ["127.0.0.1"]) == b"ok"
    request = server.seen[0].decode()
    assert request.startswith("GET /?size=big HTTP/1.1\r\n")  # an empty path is "/", the fragment stays here
    assert f"\r\nHost: shop.test:{server.port}\r\n" in request and "\r\nUser-Agent: photo/0.1\r\n" in request


def test_an_allowed_network_written_with_host_bits_is_read_as_its_network():
    # ALLOWED_IMAGE_NETWORKS=10.1.2.3/8 is accepted at start (as 10.0.0.0/8): a request must not crash on it.
    found = check_url("http://img.internal/a.jpg", False, lambda h, p: ["10.9.9.9"], allow_networks=("10.1.2.3/8",))
    assert found[3] == "10.9.9.9"
    with pytest.raises(UnsafeURL, match="private"):
        check_url("http://img.internal/a.jpg", False, lambda h, p: ["192.168.0.1"], allow_networks=("10.1.2.3/8",))


def test_an_answer_without_a_content_type_is_read():
    server = OneAnswer(b"Content-Length: 2\r\n", b"ok")  # no Content-Type header at all
    assert safe_get(server.url, 100, timeout=5, allow_private=True) == b"ok"


def test_the_host_header_leaves_out_the_default_port():
    try:
        server = OneAnswer(OK_IMAGE, b"ok", port=80)
    except OSError as exc:  # port 80 needs root (CI and the dev container run as root)
        pytest.skip(f"cannot listen on port 80 here: {exc}")
    assert safe_get("http://shop.test/a.jpg", 100, timeout=5, allow_private=True,
                    resolve=lambda h, p: ["127.0.0.1"]) == b"ok"
    assert b"\r\nHost: shop.test\r\n" in server.seen[0]


class Silent:
    """Takes the connection and the request, then says nothing for ``hold`` seconds."""

    def __init__(self, hold: float = 4.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/a.jpg"
        threading.Thread(target=self._serve, args=(hold,), daemon=True).start()

    def _serve(self, hold: float) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            time.sleep(hold)
        self.sock.close()


def test_a_server_that_never_answers_is_a_timeout_named_in_the_shoppers_words():
    with pytest.raises(UnsafeURL) as refused:
        safe_get(Silent().url, 100, timeout=1, allow_private=True)
    assert (str(refused.value), refused.value.status) == ("image URL took longer than 1s", 504)


def test_a_refused_connection_is_named():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(UnsafeURL) as refused:
        safe_get(f"http://127.0.0.1:{port}/a.jpg", 100, timeout=5, allow_private=True)
    assert (str(refused.value), refused.value.status) == ("could not fetch image URL (ConnectionError)", 400)


def test_a_location_header_on_an_ordinary_answer_is_not_followed():
    server = OneAnswer(OK_IMAGE + b"Location: http://elsewhere.test/b.jpg\r\n", b"ok")
    assert safe_get(server.url, 100, timeout=5, allow_private=True) == b"ok"


@pytest.mark.parametrize(("address", "reason"), [
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("fec0::1", "site-local"), ("127.0.0.1", "loopback"),
    ("2001:0:4136:e378:8000:63bf:a247:27dd", "Teredo tunnel"), ("93.184.216.34", None),
])
def test_each_kind_of_address_is_named_word_for_word(address, reason):
    assert address_problem(ipaddress.ip_address(address)) == reason


class HeaderDrip:
    """Accepts, then sends an answer's status line and headers one byte every ``gap`` seconds, ``total`` bytes:
    every read returns quickly, so only a deadline over the whole exchange stops it. Bounded; stops by itself."""

    def __init__(self, gap: float, total: int, tls_silent: bool = False) -> None:
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls_silent else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}/a.jpg"
        self.gap, self.total, self.tls_silent = gap, total, tls_silent
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        conn, _ = self.sock.accept()
        with conn:
            if not self.tls_silent:
                conn.recv(65536)
            if self.tls_silent:  # a TLS handshake record announced as 16 KB long, its bytes dripped
                lines = (b"\x16\x03\x03\x40\x00" + b"\x00" * self.total)[: self.total]
            else:
                lines = (b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * self.total)[: self.total]
            try:
                for byte in lines:
                    conn.sendall(bytes([byte]))
                    time.sleep(self.gap)
            except OSError:
                pass  # the client hung up: what the deadline is for
        self.sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["headers", "tls-handshake"])
def test_a_server_that_drips_its_headers_or_handshake_is_cut_off_at_the_deadline(tls):
    """Each byte arrives within any per-read timeout (0.1 s apart); the deadline still ends the fetch."""
    import time

    server = HeaderDrip(gap=0.1, total=200, tls_silent=tls)  # 20 s of dripping
    started = time.monotonic()
    with pytest.raises(UnsafeURL) as refused:
        safe_get(server.url, 10_000, timeout=1.0, allow_private=True)
    took = time.monotonic() - started
    assert (str(refused.value), refused.value.status) == ("image URL took longer than 1s", 504)
    assert 0.9 < took < 3, took  # not the 20 s the server wanted (per-read timeouts allowed all of it)


def test_the_watchdog_leaves_no_descriptor_behind(http_server):
    """Every duplicate the watchdog holds is closed with its fetch, whether it ended well or was cut."""
    import os

    url = http_server.add("/w.jpg", b"img", content_type="image/jpeg")
    safe_get(url, 100, timeout=5, allow_private=True)  # warm up lazily opened descriptors
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        assert safe_get(url, 100, timeout=5, allow_private=True) == b"img"
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_the_watchdog_cuts_a_socket_handed_to_it_after_the_deadline():
    from safeio.safe_http import Deadline, Watchdog

    a, b = socket.socketpair()
    with a, b:
        dog = Watchdog(Deadline(0.01))
        import time

        time.sleep(0.1)
        dog.watch(a)  # the deadline has passed: cut at once
        a.settimeout(2)
        assert a.recv(1) == b""  # shut down: reads end, they do not wait
        dog.close()


def test_the_watchdog_does_not_cut_a_fetch_that_finished_in_time():
    from safeio.safe_http import Deadline, Watchdog

    a, b = socket.socketpair()
    with a, b:
        dog = Watchdog(Deadline(0.2))
        dog.watch(a)
        dog.close()  # finished before the deadline
        import time

        time.sleep(0.4)
        b.sendall(b"x")
        a.settimeout(2)
        assert a.recv(1) == b"x"  # still open: closing the watchdog cancelled the cut


def test_slow_lookups_never_queue_new_ones_and_the_pool_recovers():
    """When slow names hold every lookup thread, another lookup is refused at once (503); once they answer,
    lookups work again."""
    import threading
    import time

    from safeio import safe_http

    release = threading.Event()

    def stuck(host, port):
        release.wait(10)
        return ["93.184.216.34"]

    waiting = []
    for i in range(safe_http.LOOKUP_THREADS):
        with pytest.raises(UnsafeURL, match="looking up"):
            safe_http.check_url(f"http://slow{i}.test/", False, stuck, deadline=safe_http.Deadline(0.05))
        waiting.append(i)
    started = time.monotonic()
    with pytest.raises(UnsafeURL) as busy:
        safe_http.check_url("http://other.test/", False, lambda h, p: ["93.184.216.34"],
                            deadline=safe_http.Deadline(5))
    assert busy.value.status == 503 and time.monotonic() - started < 0.5  # refused, not queued for 5 s
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the stuck lookups answer and free their threads
        try:
            got = safe_http.check_url("http://other.test/", False, lambda h, p: ["93.184.216.34"],
                                      deadline=safe_http.Deadline(5))
            break
        except UnsafeURL:
            time.sleep(0.05)
    assert got[3] == "93.184.216.34"


def test_an_answer_that_ends_because_the_watchdog_cut_it_is_the_deadline_not_an_image(http_server, monkeypatch):
    """A cut connection reads as an ordinary end of the answer (EOF): what was read by then is never returned."""
    import time

    from safeio import safe_http

    url = http_server.add("/cut.jpg", b"whole image", content_type="image/jpeg")

    def read_past_the_deadline(resp, max_bytes, deadline):
        time.sleep(deadline.at - time.monotonic() + 0.2)  # the watchdog fires meanwhile
        return b"whole"  # what had arrived before the cut

    monkeypatch.setattr(safe_http, "_image_body", read_past_the_deadline)
    with pytest.raises(UnsafeURL) as refused:
        safe_get(url, 100, timeout=0.5, allow_private=True)
    assert (str(refused.value), refused.value.status) == ("image URL took longer than 0.5s", 504)
