"""Fetch an image URL that a stranger (or a hand-edited CSV) supplied, without being turned into a proxy.

- only http/https; the host is resolved once, every address is checked, and the connection goes to
  that checked address (no second lookup, so no DNS rebinding); TLS still verifies the real name;
- loopback, private, link-local (cloud metadata), multicast, reserved, unspecified and IPv4-mapped
  IPv6 forms of those are refused unless ``allow_private`` is set;
- redirects are followed by hand, at most ``MAX_REDIRECTS``, each hop checked again;
- one wall-clock deadline for the whole fetch: every lookup, connect, TLS handshake, header, redirect and
  body byte. It is enforced on the socket itself (a watchdog shuts the connection down at the deadline),
  not per read: a server that drips its headers or body a byte at a time is cut off at the deadline;
- lookups run in a small pool and never queue: when slow names hold every lookup thread, a new lookup
  is refused at once (503) instead of waiting behind them;
- a byte cap while streaming, and a content-type check; proxy environment variables are ignored (a
  proxy would connect to the name again, around the pinned address); names are sent as IDNA.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_REDIRECTS = 3
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "application/octet-stream")

#: Resolver used for every lookup; tests swap it to point names at loopback.
Resolver = Callable[[str, int], list[str]]


#: Why a URL failed, in kinds a gateway can word for a shopper (``str(err)`` is the technical reason, for logs).
URL_KINDS = ("invalid", "refused", "unreachable", "not_image", "too_large", "slow", "busy")


class UnsafeURL(ValueError):
    """A URL refused before or while fetching; ``status`` is the HTTP status a gateway should answer and
    ``kind`` (one of ``URL_KINDS``) what went wrong, for words a shopper understands."""

    def __init__(self, message: str, status: int = 400, kind: str = "refused") -> None:
        super().__init__(message)
        self.status = status
        self.kind = {504: "slow", 503: "busy", 413: "too_large"}.get(status, kind)


#: Lookup threads per process. A lookup the deadline gave up on keeps its thread until the resolver
#: answers, so the pool can fill with slow names; then new lookups are refused, never queued.
LOOKUP_THREADS = 8
#: Lookups run here so that a slow resolver cannot outlast the fetch's deadline.
_LOOKUPS = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="dns")
#: Lookups submitted and not yet answered (a slot is freed when the resolver returns, not when we give up).
_LOOKUP_SLOTS = threading.BoundedSemaphore(LOOKUP_THREADS)


def _new_lookup_threads() -> None:
    """A forked child (gunicorn with --preload, a forking test runner) gets its own pool: the parent's threads
    do not exist there, yet its pool would count them as idle and wait on them forever."""
    global _LOOKUPS, _LOOKUP_SLOTS
    _LOOKUPS = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="dns")
    _LOOKUP_SLOTS = threading.BoundedSemaphore(LOOKUP_THREADS)


os.register_at_fork(after_in_child=_new_lookup_threads)


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


def idna_host(host: str) -> str:
    """``host`` as sent on the wire: IDNA (punycode) for an internationalised name, IP literals unchanged."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UnsafeURL(f"image URL host {host[:80]!r} is not a valid host name", kind="invalid") from None


class Deadline:
    """One wall-clock budget shared by every step of a fetch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; ``UnsafeURL`` (504) when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise UnsafeURL(f"image URL took longer than {self.seconds:g}s", 504)
        return left


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be fetched from, or None if it is a public unicast address.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo) are judged by what they carry too."""
    mapped = getattr(ip, "ipv4_mapped", None) or getattr(ip, "sixtofour", None)
    if mapped is not None:
        return address_problem(mapped)
    teredo = getattr(ip, "teredo", None)
    if teredo is not None:
        return next((p for p in map(address_problem, teredo) if p), None) or "Teredo tunnel"
    for attr, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_link_local", "link-local"), ("is_site_local", "site-local"),
                       ("is_multicast", "multicast"), ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, attr, False):
            return what
    if not ip.is_global:
        return "non-public"
    return None


def _in_networks(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[str, ...]) -> bool:
    """Whether ``ip`` is in one of ``networks`` (CIDRs; host bits, as in 10.1.2.3/8, are ignored)."""
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def check_url(url: str, allow_private: bool, resolve: Resolver,
              allow_networks: tuple[str, ...] = (), deadline: Deadline | None = None) -> tuple[str, str, int, str]:
    """(scheme, IDNA host, port, pinned address) for a URL that may be fetched, else ``UnsafeURL``.

    ``allow_networks`` (CIDRs) admits chosen non-public ranges, e.g. an internal image host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("image URL is malformed", kind="invalid") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("image URL must start with http:// or https://", kind="invalid")
    if parts.username or parts.password:
        raise UnsafeURL("image URL must not contain credentials")
    host = parts.hostname
    if not host:
        raise UnsafeURL("image URL has no host", kind="invalid")
    host = idna_host(host)
    port = port or (443 if scheme == "https" else 80)
    lookup = _submit_lookup(resolve, host, port)
    try:
        addresses = lookup.result(timeout=deadline.left() if deadline else None)
    except FutureTimeout:
        raise UnsafeURL(f"image URL took longer than {deadline.seconds:g}s (looking up {host!r})", 504) from None
    except (OSError, UnicodeError):
        raise UnsafeURL(f"cannot resolve host {host!r}", kind="unreachable") from None
    if not addresses:
        raise UnsafeURL(f"cannot resolve host {host!r}", kind="unreachable")
    for raw in addresses:
        ip = ipaddress.ip_address(raw.split("%")[0])
        problem = address_problem(ip)
        if problem and not allow_private and not _in_networks(ip, allow_networks):
            raise UnsafeURL(f"image URL host {host!r} resolves to a {problem} address ({ip}); refused")
    return scheme, host, port, addresses[0].split("%")[0]


def _submit_lookup(resolve: Resolver, host: str, port: int):
    """Start a lookup in the pool, or refuse at once (503) when slow lookups hold every thread."""
    slots = _LOOKUP_SLOTS
    if not slots.acquire(blocking=False):
        raise UnsafeURL("too many image links are being looked up right now", 503)

    def run() -> list[str]:
        try:
            return resolve(host, port)
        finally:
            slots.release()

    try:
        return _LOOKUPS.submit(run)
    except RuntimeError:  # the pool is shut down (interpreter exit)
        slots.release()
        raise UnsafeURL("image links cannot be fetched right now", 503) from None


class Watchdog:
    """Shuts down every connection of one fetch when its deadline passes, whatever the fetch is waiting on
    (the TLS handshake, a header dripped a byte at a time, the body): a blocked read then returns at once.

    It holds a duplicate of each socket, so its descriptor cannot be reused for another connection before
    ``close``; shutting the duplicate down ends the connection the fetch reads from."""

    def __init__(self, deadline: Deadline) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._fired = self._closed = False
        self._timer = threading.Timer(max(deadline.at - time.monotonic(), 0.0), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` at the deadline (at once if it has passed)."""
        with self._lock:
            if self._closed:
                return
            twin = sock.dup()
            self._socks.append(twin)
            if self._fired:
                _shut(twin)

    @property
    def fired(self) -> bool:
        """Whether the deadline passed and the connections were cut (an answer read since may be cut short)."""
        with self._lock:
            return self._fired

    def _cut(self) -> None:
        with self._lock:
            self._fired = True
            for sock in self._socks:
                _shut(sock)

    def close(self) -> None:
        """Stop watching; the duplicates are closed (the fetch's own sockets are its to close)."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for sock in self._socks:
                sock.close()
            self._socks.clear()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its peer: nothing left to cut


def _watched_pools(watch: Callable[[socket.socket], None]) -> dict[str, type]:
    """Connection-pool classes whose new sockets are handed to ``watch`` before any byte is exchanged."""
    def new_conn(base: type) -> Callable[..., socket.socket]:
        def _new_conn(self) -> socket.socket:
            sock = base._new_conn(self)
            watch(sock)
            return sock
        return _new_conn

    http = type("WatchedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn(HTTPConnection)})
    https = type("WatchedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn(HTTPSConnection)})
    return {"http": type("WatchedPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("WatchedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}


class _PinnedAdapter(HTTPAdapter):
    """Connects to the checked IP while TLS (SNI and certificate) uses the real host name; every connection
    it opens is handed to the fetch's watchdog."""

    def __init__(self, hostname: str, watchdog: Watchdog) -> None:
        self.hostname = hostname
        self.watchdog = watchdog
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["server_hostname"] = self.hostname
        kwargs["assert_hostname"] = self.hostname
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _watched_pools(self.watchdog.watch)


def safe_get(url: str, max_bytes: int, timeout: float, allow_private: bool = False,
             resolve: Resolver | None = None, user_agent: str = "photo/0.1",
             allow_networks: tuple[str, ...] = ()) -> bytes:
    """The body of ``url`` (an image), with every guard above, or ``UnsafeURL`` saying why not.

    ``timeout`` is the whole fetch's budget: lookups, connects, redirects and the body together."""
    resolve = resolve or system_resolve
    deadline = Deadline(timeout)
    watchdog = Watchdog(deadline)
    try:
        return _fetch(url.strip(), max_bytes, deadline, watchdog,
                      _Policy(allow_private, resolve, user_agent, allow_networks))
    finally:
        watchdog.close()


class _Policy:
    """What a fetch may reach and how it names itself."""

    def __init__(self, allow_private: bool, resolve: Resolver, user_agent: str,
                 allow_networks: tuple[str, ...]) -> None:
        self.allow_private, self.resolve = allow_private, resolve
        self.user_agent, self.allow_networks = user_agent, allow_networks


def _fetch(url: str, max_bytes: int, deadline: Deadline, watchdog: Watchdog, policy: _Policy) -> bytes:
    """Follow at most ``MAX_REDIRECTS`` checked hops to the image body."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address = check_url(url, policy.allow_private, policy.resolve, policy.allow_networks,
                                                deadline)
        parts = urlsplit(url)
        literal = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        default_port = port == (443 if scheme == "https" else 80)
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed in Host
        with requests.Session() as session:
            session.trust_env = False  # no proxies from the environment: they would bypass the pinning
            session.mount(f"{scheme}://", _PinnedAdapter(host, watchdog))
            headers = {"Host": name if default_port else f"{name}:{port}", "User-Agent": policy.user_agent}
            left = deadline.left()
            try:
                resp = session.get(pinned, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(left, left))
            except requests.RequestException as exc:
                _check_cut(watchdog, deadline)  # a connection the watchdog cut is reported as the deadline
                if isinstance(exc, requests.Timeout):
                    raise UnsafeURL(f"image URL took longer than {deadline.seconds:g}s", 504) from None
                raise UnsafeURL(f"could not fetch image URL ({type(exc).__name__})", kind="unreachable") from None
            with resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                body = _image_body(resp, max_bytes, deadline)
                _check_cut(watchdog, deadline)  # a cut looks like the end of the answer: never take it as one
                return body
    raise UnsafeURL(f"image URL redirected more than {MAX_REDIRECTS} times", kind="unreachable")


def _check_cut(watchdog: Watchdog, deadline: Deadline) -> None:
    """``UnsafeURL`` (504) when the deadline has passed or the watchdog cut the connection."""
    if watchdog.fired:
        raise UnsafeURL(f"image URL took longer than {deadline.seconds:g}s", 504)
    deadline.left()


def _image_body(resp: requests.Response, max_bytes: int, deadline: Deadline) -> bytes:
    """The body of an image answer, at most ``max_bytes``, read before ``deadline``."""
    if resp.status_code != 200:
        raise UnsafeURL(f"image URL answered HTTP {resp.status_code}", kind="unreachable")
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in IMAGE_TYPES:
        raise UnsafeURL(f"image URL is not an image (content-type {ctype})", kind="not_image")
    too_large = UnsafeURL(f"image URL is larger than {max_bytes // (1024 * 1024)} MB", 413)
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    sock = _socket_of(resp)
    while True:
        if sock is not None:
            sock.settimeout(deadline.left())  # a stalled read ends at the deadline too
        try:
            chunk = resp.raw.read1(64 * 1024)  # returns what has arrived: a drip is seen byte by byte
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            deadline.left()  # a read cut off by the deadline is reported as the deadline
            raise UnsafeURL(f"could not fetch image URL ({type(exc).__name__})", kind="unreachable") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
        deadline.left()


def _socket_of(resp: requests.Response) -> socket.socket | None:
    """The connection's socket, so that each read can be given the time left (None if not reachable)."""
    connection = getattr(resp.raw, "connection", None) or getattr(resp.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None
