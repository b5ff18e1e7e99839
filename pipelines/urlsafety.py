"""URL safety: only http(s), and no loopback/private/link-local hosts unless explicitly allowed.

Cloud metadata endpoints (169.254.169.254) and internal services live on those addresses; a URL
list from the web must not make our workers fetch them. Checked before img2dataset sees a URL.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")

Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    """IP addresses a host name resolves to (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return sorted({info[4][0] for info in infos})


def _blocked_ip(ip: ipaddress._BaseAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                        ("private", ip.is_private), ("unspecified", ip.is_unspecified),
                        ("multicast", ip.is_multicast), ("reserved", ip.is_reserved)):
        if flag:
            return label
    return None


class UrlChecker:
    """Checks URLs, caching host resolutions; picklable (the cache is plain data)."""

    def __init__(self, *, allow_private_network: bool = False, resolver: Resolver = resolve_host) -> None:
        self.allow_private_network = allow_private_network
        self.resolver = resolver
        self._hosts: dict[str, str | None] = {}

    def check(self, url: object) -> str | None:
        """None when the URL may be fetched, else the reason it is refused (human readable)."""
        if not isinstance(url, str) or not url.strip():
            return "missing or empty url"
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError as err:
            return f"malformed url: {err}"
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return f"scheme {parts.scheme or '(none)'!r} not allowed (only http, https)"
        if not host:
            return "url has no host"
        if self.allow_private_network:
            return None
        if host not in self._hosts:
            self._hosts[host] = self._check_host(host)
        return self._hosts[host]

    def _check_host(self, host: str) -> str | None:
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            addrs = []
            for a in self.resolver(host):
                try:
                    addrs.append(ipaddress.ip_address(a.split("%", 1)[0]))
                except ValueError:
                    continue
        for ip in addrs:
            label = _blocked_ip(ip)
            if label:
                via = "" if str(ip) == host else f" (resolves to {ip})"
                return f"host {host}{via} is a {label} address; pass allow_private_network=True to allow it"
        return None  # unresolvable hosts fail later as a network error, with the resolver's message

    def check_many(self, urls: Sequence[object], *, threads: int = 16) -> list[str | None]:
        """Check many URLs; distinct hosts are resolved in parallel first."""
        hosts = set()
        for u in urls:
            if isinstance(u, str):
                try:
                    h = urlsplit(u.strip()).hostname
                except ValueError:
                    h = None
                if h and h not in self._hosts:
                    hosts.add(h)
        if hosts and not self.allow_private_network:
            with ThreadPoolExecutor(max(1, min(threads, len(hosts)))) as pool:
                for h, res in zip(hosts, pool.map(self._check_host, hosts)):
                    self._hosts[h] = res
        return [self.check(u) for u in urls]
