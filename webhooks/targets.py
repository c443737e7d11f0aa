"""Where a webhook may be sent (server-side request forgery guard).

A subscriber names a URL and the platform's workers POST to it from inside the platform's
network, so a URL must not reach what only the platform can reach: the database, Redis, the
object store, a cloud's metadata service (169.254.169.254). The rule: http or https only, no
credentials in the URL, and every address the host resolves to must be public: no private,
loopback, link-local, multicast, reserved, unspecified or otherwise non-global address, for
IPv4 and IPv6 alike, IPv4 addresses carried inside IPv6 ones (``::ffff:10.0.0.1``, 6to4,
NAT64, Teredo) judged as the IPv4 address they carry.

``WEBHOOK_ALLOW_PRIVATE_TARGETS`` admits private (RFC 1918, IPv6 unique local) and loopback
addresses (a receiver on the platform's own network), never link-local ones (the metadata
service) or the other kinds; ``WEBHOOK_ALLOWED_NETWORKS`` admits exactly the networks it lists,
whatever their kind. The check runs when a subscription is saved and again at every delivery
attempt (DNS may have changed since), and the attempt connects to the very address it checked
(``webhooks.transport``), so a name that resolves differently a moment later (DNS rebinding)
cannot slip past.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
URL_MAX_LENGTH = 2000
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Private in the narrow sense (RFC 1918, IPv6 unique local): what WEBHOOK_ALLOW_PRIVATE_TARGETS
# admits. ipaddress's is_private is wider (documentation, benchmarking, reserved ranges).
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class TargetError(ValueError):
    """The URL may not be used. ``final``: it never will (its form or its addresses); otherwise
    it may later (the name did not resolve now)."""

    def __init__(self, message: str, *, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class Target:
    """A checked URL, taken apart for a connection to an address of our choosing."""

    scheme: str
    host: str  # the host name (IDNA) or the IP literal, without brackets
    port: int
    path: str  # path and query: what goes on the request line
    host_header: str  # the Host header: host (bracketed if IPv6) and the port unless default

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def target_parse(url: str) -> Target:
    """``url`` taken apart; raises :class:`TargetError` naming what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise TargetError("a URL is required")
    url = url.strip()
    if len(url) > URL_MAX_LENGTH:
        raise TargetError(f"longer than {URL_MAX_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise TargetError("contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TargetError("the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise TargetError("must not contain credentials (user:password@); deliveries are signed instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetError("has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TargetError(f"has an invalid port: {exc}") from exc
    if port == 0:
        raise TargetError("has an invalid port: 0")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise TargetError(f"has an invalid host name: {exc}") from exc
    shown = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    default_port = 443 if scheme == "https" else 80
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        host_header=shown if port == default_port else f"{shown}:{port}",
    )


@lru_cache(maxsize=32)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec)


def _allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _networks(tuple(getattr(settings, "WEBHOOK_ALLOWED_NETWORKS", ()) or ()))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo client), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _kind(address: IPAddress) -> str | None:
    """What makes ``address`` unfit for a webhook, or None for a public address."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if any(address.version == net.version and address in net for net in _PRIVATE):
        return "private"
    if not address.is_global or address.is_private:
        return "non-public"
    return None


def address_refusal(address: IPAddress | str) -> str | None:
    """Why the platform will not connect to ``address``, or None when it may."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if any(ip.version == net.version and ip in net for net in _allowed_networks()):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(inner)
            return f"{reason} (carried in {ip})" if reason else None
    kind = _kind(ip)
    if kind is None:
        return None
    if kind in ("private", "loopback") and getattr(settings, "WEBHOOK_ALLOW_PRIVATE_TARGETS", False):
        return None
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{ip} is {article} {kind} address"


def host_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order
    (tests replace this to stand in for DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone: link-local is refused anyway
        if text not in seen:
            seen.append(text)
    return seen


def target_resolve(target: Target) -> list[str]:
    """The addresses to connect to for ``target``, every one of them allowed; raises
    :class:`TargetError` when the host does not resolve or any address it resolves to is
    refused (a name that mixes public and private addresses is refused whole)."""
    literal = target.literal
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = host_addresses(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise TargetError(f"{target.host} does not resolve: {exc}", final=False) from exc
        if not addresses:
            raise TargetError(f"{target.host} does not resolve", final=False)
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            where = "" if literal is not None else f"{target.host} resolves to "
            raise TargetError(f"{where}{reason}; webhooks go to public addresses only")
    return addresses


def target_check(url: str) -> tuple[Target, list[str]]:
    """``url`` parsed and resolved to the addresses a delivery may connect to."""
    target = target_parse(url)
    return target, target_resolve(target)
