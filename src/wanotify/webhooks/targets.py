"""Where webhooks may be sent: the SSRF guard.

An org admin (a tenant) chooses the webhook URL, so without a guard they could make the service
call addresses only it can reach: loopback, the private network it runs on, or the cloud
metadata service at 169.254.169.254. Two checks use the one rule in :func:`address_problem`:

* :func:`check_url` when the URL is saved: http(s) with a host, and the host must not be an IP
  literal in a non-public range nor a ``localhost`` name.
* :func:`resolve_target` before each send: the host is resolved and every address must be
  public (DNS can change after saving: DNS rebinding). The sender then connects to the address
  it checked (see ``WebhookSender``), so the name cannot be re-resolved elsewhere in between.

Both are skipped by ``WANOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`` (development, or a host app
on the same private network) and, for single hosts, by ``WANOTIFY_WEBHOOK_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wanotify.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_HINT = (
    "set WANOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true or list the host in "
    "WANOTIFY_WEBHOOK_ALLOWED_HOSTS to allow"
)
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class TargetRefused(ValueError):
    """The URL or the address it resolves to is not allowed; ``str()`` says why and how to
    allow it."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, allow_private: bool = False, allowed_hosts: Iterable[str] = ()) -> TargetPolicy:
        return cls(allow_private, frozenset(normalize_host(h) for h in allowed_hosts if h.strip()))

    @classmethod
    def from_settings(cls, settings: Settings) -> TargetPolicy:
        return cls.of(settings.webhook_allow_private_targets, settings.webhook_allowed_hosts)

    def allows_any_address(self, host: str) -> bool:
        return self.allow_private or normalize_host(host) in self.allowed_hosts


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets, IP literals in their canonical form."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = parse_ip(host)
    return str(ip) if ip is not None else host


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, including the legacy IPv4 forms resolvers accept
    (``2130706433``, ``0x7f.1``, ``127.1``); None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why webhooks must not go to ``ip`` (e.g. "a loopback address"); None when it is public.
    IPv4 addresses embedded in IPv6 ones (``::ffff:127.0.0.1``, 6to4) are judged as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            return address_problem(inner)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public (special-use) address"
    return None


def check_url(url: str, policy: TargetPolicy) -> str:
    """The URL, stripped, if webhooks may be saved to it; raises :class:`TargetRefused`."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused("must be an http(s) URL such as https://app.example/hooks")
    if policy.allows_any_address(host):
        return url
    name = normalize_host(host)
    ip = parse_ip(name)
    if ip is not None:
        problem = address_problem(ip)
        if problem:
            raise TargetRefused(f"{name} is {problem} ({ALLOW_PRIVATE_HINT})")
    elif name in LOCAL_NAMES or name.endswith(".localhost"):
        raise TargetRefused(f"{name} names this machine ({ALLOW_PRIVATE_HINT})")
    return url


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, by the system resolver (off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The seam tests replace (``monkeypatch.setattr(targets, "resolve", ...)``).
resolve: Resolver = system_resolve


async def resolve_target(host: str, port: int, policy: TargetPolicy) -> str:
    """Resolve ``host`` and return the address to connect to; raises :class:`TargetRefused`
    when ANY address it resolves to is not public (unless the policy allows it), and
    ``OSError`` when it does not resolve."""
    addresses = await resolve(host, port)
    if not addresses:
        raise OSError(f"{host} does not resolve")
    if not policy.allows_any_address(host):
        for address in addresses:
            ip = parse_ip(address)
            problem = address_problem(ip) if ip is not None else "not an IP address"
            if problem:
                raise TargetRefused(
                    f"webhook host {host} resolves to {problem} {address} ({ALLOW_PRIVATE_HINT})"
                )
    return addresses[0]
