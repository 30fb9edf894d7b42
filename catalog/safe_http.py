"""Fetch an image URL that a stranger (or a hand-edited CSV) supplied, without being turned into a proxy.

- only http/https; the host is resolved once, every address is checked, and the connection goes to
  that checked address (no second lookup, so no DNS rebinding); TLS still verifies the real name;
- loopback, private, link-local (cloud metadata), multicast, reserved, unspecified and IPv4-mapped
  IPv6 forms of those are refused unless ``allow_private`` is set;
- redirects are followed by hand, at most ``MAX_REDIRECTS``, each hop checked again;
- connect/read timeouts, a byte cap while streaming, and a content-type check.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

MAX_REDIRECTS = 3
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "application/octet-stream")

#: Resolver used for every lookup; tests swap it to point names at loopback.
Resolver = Callable[[str, int], list[str]]


class UnsafeURL(ValueError):
    """A URL refused before or while fetching; ``status`` is the HTTP status a gateway should answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be fetched from, or None if it is a public unicast address."""
    mapped = getattr(ip, "ipv4_mapped", None) or getattr(ip, "sixtofour", None)
    if mapped is not None:
        return address_problem(mapped)
    for attr, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                       ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return what
    if not ip.is_global:
        return "non-public"
    return None


def check_url(url: str, allow_private: bool, resolve: Resolver,
              allow_networks: tuple[str, ...] = ()) -> tuple[str, str, int, str]:
    """(scheme, host, port, pinned address) for a URL that may be fetched, else ``UnsafeURL``.

    ``allow_networks`` (CIDRs) admits chosen non-public ranges, e.g. an internal image host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("image URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("image URL must start with http:// or https://")
    if parts.username or parts.password:
        raise UnsafeURL("image URL must not contain credentials")
    host = parts.hostname
    if not host:
        raise UnsafeURL("image URL has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise UnsafeURL(f"cannot resolve host {host!r}") from None
    if not addresses:
        raise UnsafeURL(f"cannot resolve host {host!r}")
    for raw in addresses:
        ip = ipaddress.ip_address(raw.split("%")[0])
        problem = address_problem(ip)
        if problem and not allow_private and not any(ip in ipaddress.ip_network(n) for n in allow_networks):
            raise UnsafeURL(f"image URL host {host!r} resolves to a {problem} address ({ip}); refused")
    return scheme, host, port, addresses[0].split("%")[0]


class _PinnedAdapter(HTTPAdapter):
    """Connects to the checked IP while TLS (SNI and certificate) uses the real host name."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["server_hostname"] = self.hostname
        kwargs["assert_hostname"] = self.hostname
        super().init_poolmanager(*args, **kwargs)


def safe_get(url: str, max_bytes: int, timeout: float, allow_private: bool = False,
             resolve: Resolver | None = None, user_agent: str = "photo/0.1",
             allow_networks: tuple[str, ...] = ()) -> bytes:
    """The body of ``url`` (an image), with every guard above, or ``UnsafeURL`` saying why not."""
    resolve = resolve or system_resolve
    url = url.strip()
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address = check_url(url, allow_private, resolve, allow_networks)
        parts = urlsplit(url)
        literal = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        default_port = port == (443 if scheme == "https" else 80)
        with requests.Session() as session:
            session.mount(f"{scheme}://", _PinnedAdapter(host))
            headers = {"Host": host if default_port else f"{host}:{port}", "User-Agent": user_agent}
            try:
                resp = session.get(pinned, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(min(timeout, 5.0), timeout))
            except requests.Timeout:
                raise UnsafeURL(f"image URL timed out after {timeout:g}s") from None
            except requests.RequestException as exc:
                raise UnsafeURL(f"could not fetch image URL ({type(exc).__name__})") from None
            with resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise UnsafeURL(f"image URL answered HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype and ctype not in IMAGE_TYPES:
                    raise UnsafeURL(f"image URL is not an image (content-type {ctype})")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise UnsafeURL(f"image URL is larger than {max_bytes // (1024 * 1024)} MB", 413)
                chunks, size = [], 0
                for chunk in resp.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UnsafeURL(f"image URL is larger than {max_bytes // (1024 * 1024)} MB", 413)
                    chunks.append(chunk)
                return b"".join(chunks)
    raise UnsafeURL(f"image URL redirected more than {MAX_REDIRECTS} times")
