"""The client's address, as the enrollment rate limit counts it.

Behind a reverse proxy every agent comes from the proxy's address, and one
office's typos would lock out the whole company.  ``X-Forwarded-For`` is
a request header anyone can send, so it counts only when the connection
comes from a proxy named in ``web.trusted_proxies``; then the address is
the rightmost one in the header that is not itself a trusted proxy (the
proxies append, the client writes the left end: anything left of the first
untrusted address is the client's own claim).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from werkzeug.wrappers import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed; none by default."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """Addresses or networks (``10.0.0.5``, ``10.1.0.0/16``, ``::1``); ValueError names a bad one."""
        return cls(tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries))

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, request: Request) -> str:
        peer = request.environ.get("REMOTE_ADDR") or "unknown"
        if not self.networks or not self.trusts(peer):
            return str(peer)
        hops = [hop.strip() for header in request.headers.getlist("X-Forwarded-For") for hop in header.split(",")]
        for hop in reversed(hops):
            if _address(hop) is None:
                return str(peer)  # a malformed entry: believe no further than the proxy itself
            if not self.trusts(hop):
                return hop
        return str(peer)
