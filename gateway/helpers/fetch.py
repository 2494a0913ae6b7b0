"""Fetching URLs that customers or API callers supplied, without server-side request forgery.

A URL on a message (an email attachment, a media link) is chosen by whoever produced the message,
and the gateway fetches it from inside your network. Left alone, that lets a caller read the cloud
metadata service (credentials), probe intranet services, or have the gateway download until it
runs out of memory. So every such fetch goes through ``UrlFetcher``, which:

* refuses loopback, private (RFC 1918, unique-local), link-local (169.254.169.254 included),
  carrier-grade NAT, multicast, unspecified and reserved addresses, IPv4 embedded in IPv6
  (``::ffff:127.0.0.1``, NAT64, 6to4) by the address it embeds, and the cloud metadata hostnames;
* checks the address **after** DNS resolution, in the connector's resolver: the connection goes
  to the very address that was checked, so a name that resolves differently a moment later (DNS
  rebinding) cannot slip through;
* follows redirects itself, a bounded number, with the same checks on every hop and only to
  http(s);
* counts bytes while they stream in (after decompression) and stops at the cap, whatever
  Content-Length said; one deadline covers all hops;
* lets an operator allow intranet sources (CIDRs or hostnames, ``[fetch] allow``).

Each fetch uses its own short-lived session: the policy lives in the connector, and sharing the
provider-API session would hand it to every other request too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.provider_http import is_retryable_status, retry_after_seconds

log = structlog.get_logger(__name__)

__all__ = [
    "BLOCKED_HOSTNAMES",
    "DEFAULT_MAX_REDIRECTS",
    "Allowlist",
    "FetchError",
    "Fetched",
    "UrlFetcher",
    "address_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_REDIRECTS: Final = 5
DEFAULT_TIMEOUT_S: Final = 30.0
CHUNK_BYTES: Final = 64 * 1024
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
SCHEMES: Final = frozenset({"http", "https"})

# Names that lead to the machine itself or to a cloud's instance metadata service; refused before
# any lookup (they usually resolve to refused addresses anyway, but not always: /etc/hosts, search
# domains). Subdomains of ``localhost`` are refused too (RFC 6761).
BLOCKED_HOSTNAMES: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "metadata",
        "metadata.google.internal",  # GCP
        "metadata.goog",  # GCP
        "instance-data",  # AWS
        "instance-data.ec2.internal",  # AWS
    }
)


def _nets(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in entries)


# First match wins, so the metadata endpoints are named as such rather than as link-local.
_REFUSED_V4: Final = _nets(
    ("169.254.169.254/32", "cloud metadata"),  # AWS, GCP, Azure, OCI...
    ("169.254.170.2/32", "cloud metadata"),  # AWS ECS task metadata
    ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments (OCI metadata is 192.0.0.192)
    ("192.0.2.0/24", "reserved"),  # documentation
    ("192.88.99.0/24", "reserved"),  # former 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),  # benchmarking
    ("198.51.100.0/24", "reserved"),  # documentation
    ("203.0.113.0/24", "reserved"),  # documentation
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # and the broadcast address
)
_REFUSED_V6: Final = _nets(
    ("fd00:ec2::254/128", "cloud metadata"),  # AWS over IPv6
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo included
    ("2001:db8::/32", "reserved"),  # documentation
    ("3fff::/20", "reserved"),  # documentation
    ("fc00::/7", "private"),  # unique-local
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),  # former site-local
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST_V6: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64 well-known prefix, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_problem(address: IPAddress) -> str | None:
    """Why the gateway must not connect to ``address`` ("loopback", "private", "cloud metadata"...),
    or None for a public address. Explicit tables rather than ``is_global``, whose meaning changed
    between Python releases."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        embedded = _embedded_v4(address)
        if embedded is not None:
            return address_problem(embedded)
        for network, reason in _REFUSED_V6:
            if address in network:
                return reason
        return None if address in _GLOBAL_UNICAST_V6 else "reserved"
    for network, reason in _REFUSED_V4:
        if address in network:
            return reason
    return None


def _host_name(host: str) -> str:
    """The comparable form of a host name: lower case, no trailing dot, no IPv6 brackets."""
    return host.strip("[]").rstrip(".").lower()


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_host_name(host))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Intranet sources an operator allows although their addresses would be refused.

    Entries are CIDRs or addresses (``10.20.0.0/16``, ``127.0.0.1``, ``fd12::/48``), host names
    (``files.corp.example``: whatever it resolves to is allowed) or ``*.corp.example`` (its
    subdomains, not the name itself).
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Raise ValueError naming the first entry that is neither a network nor a host name."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            name = _host_name(text.removeprefix("*."))
            labels = name.split(".")
            if not name or any(not _is_label(label) for label in labels) or labels[-1].isdigit():
                raise ValueError(f"{entry!r} is neither a CIDR, an IP address nor a host name")
            if text.startswith("*."):
                suffixes.append("." + name)
            else:
                hosts.add(name)
        return cls(tuple(networks), frozenset(hosts), tuple(suffixes))

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts or self.suffixes)

    def allows_host(self, host: str) -> bool:
        name = _host_name(host)
        return name in self.hosts or name.endswith(self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_v4(address)) is not None:
            candidates.append(embedded)
        return any(a in network for a in candidates for network in self.networks if a.version == network.version)


def _is_label(label: str) -> bool:
    return 0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()


class FetchError(Exception):
    """A URL could not be had. ``code``: ``refused`` (an address, name or scheme the policy does
    not allow), ``too_large``, ``too_many_redirects``, ``invalid_url``, ``timeout``,
    ``connection`` or ``http_<status>``; ``retryable`` says whether trying later may help."""

    def __init__(self, code: str, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class _Refused(FetchError):
    """Raised inside aiohttp's resolver too; not an OSError, so aiohttp lets it through unwrapped."""

    def __init__(self, host: str, reason: str, what: str) -> None:
        super().__init__("refused", f"{what}: not fetched unless [fetch] allow lists it", retryable=False)
        self.host = host
        self.reason = reason
        self.what = what


def _a(reason: str) -> str:
    return f"an {reason}" if reason[0] in "aeiou" else f"a {reason}"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful (2xx) answer, read whole: the final URL after redirects, status, headers, body."""

    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        """The media type of Content-Type (lower case, no parameters), None when absent or unusable."""
        value = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        return value if "/" in value else None


@dataclass(frozen=True, slots=True)
class _Policy:
    allow: Allowlist

    def check_host(self, host: str) -> None:
        """Refuse names and literal addresses before connecting (aiohttp skips the resolver for
        literal addresses, so this is where they are checked)."""
        if self.allow.allows_host(host):
            return
        name = _host_name(host)
        address = _ip(name)
        if address is not None:
            reason = address_problem(address)
            if reason is not None and not self.allow.allows_address(address):
                raise _Refused(name, reason, f"{name} is {_a(reason)} address")
        elif ":" in name or name.replace(".", "").isdigit():
            # 2130706433, 127.1, 0177.0.0.1: the socket layer would read these as addresses
            # without any resolver seeing them (aiohttp refuses them too; this does not rely on it).
            raise FetchError("invalid_url", f"{name} is not a canonical IP address", retryable=False)
        elif name in BLOCKED_HOSTNAMES or name.endswith(".localhost"):
            raise _Refused(name, "host name", f"{name} names this machine or a cloud metadata service")

    def vet(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        """The resolved addresses the connector may use; refuse when none is left."""
        if self.allow.allows_host(host):
            return results
        kept: list[ResolveResult] = []
        refused: tuple[str, str] | None = None
        for result in results:
            address = _ip(result["host"])
            reason = "unparseable" if address is None else address_problem(address)
            if reason is None or (address is not None and self.allow.allows_address(address)):
                kept.append(result)
            elif refused is None:
                refused = (result["host"], reason)
        if not kept:
            name = _host_name(host)
            seen, reason = refused or ("nothing", "unresolvable")
            raise _Refused(name, reason, f"{name} resolves to {seen}, {_a(reason)} address")
        return kept


class _VettingResolver(AbstractResolver):
    """Resolves with ``inner`` and passes on only the addresses the policy allows, so the connector
    connects to exactly what was checked."""

    def __init__(self, inner: AbstractResolver, policy: _Policy, *, owns_inner: bool) -> None:
        self._inner = inner
        self._policy = policy
        self._owns_inner = owns_inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        return self._policy.vet(host, results)

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


@dataclass(frozen=True)
class UrlFetcher:
    """Fetches customer-supplied URLs safely (see the module docstring); one per process, shared by
    every plugin through ``ChannelServices.fetcher``.

    ``allow``: CIDRs and host names the operator trusts (``[fetch] allow``). ``resolver``: the DNS
    resolver whose answers are vetted (tests pass one that maps made-up names to local servers).
    """

    allow: Allowlist = field(default_factory=Allowlist)
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    resolver: AbstractResolver | None = None
    user_agent: str = "message-gateway"

    @classmethod
    def from_settings(cls, allow: Iterable[str] = (), *, max_redirects: int = DEFAULT_MAX_REDIRECTS) -> UrlFetcher:
        return cls(allow=Allowlist.parse(allow), max_redirects=max_redirects)

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Fetched:
        """GET ``url`` and return its 2xx answer of at most ``max_bytes`` (decoded) bytes, within
        ``timeout_s`` for all hops together; raise FetchError otherwise."""
        policy = _Policy(self.allow)
        resolver = _VettingResolver(
            self.resolver or aiohttp.ThreadedResolver(), policy, owns_inner=self.resolver is None
        )
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=1)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
            headers={"User-Agent": self.user_agent},
            trust_env=False,  # never through a proxy from the environment: it would do the connecting
        )
        try:
            async with asyncio.timeout(timeout_s):
                return await self._follow(session, policy, url, max_bytes)
        except TimeoutError:
            raise FetchError("timeout", f"no complete answer within {timeout_s:g}s", retryable=True) from None
        except _Refused as exc:
            log.warning("fetch_refused", host=exc.host, reason=exc.reason)
            raise
        except aiohttp.InvalidURL as exc:
            raise FetchError("invalid_url", f"not a usable URL: {exc}", retryable=False) from None
        except aiohttp.ClientConnectorError as exc:  # the message names host and port, never the path
            raise FetchError("connection", f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except aiohttp.ClientError as exc:  # others may quote the URL, whose query can hold a token
            raise FetchError("connection", f"{type(exc).__name__} while downloading", retryable=True) from exc
        finally:
            await session.close()
            await resolver.close()

    async def _follow(self, session: aiohttp.ClientSession, policy: _Policy, url: str, max_bytes: int) -> Fetched:
        current = _parse(url)
        for hop in range(self.max_redirects + 1):
            if current.scheme not in SCHEMES or not current.raw_host:
                what = "a redirect" if hop else "the URL"
                raise FetchError("refused", f"{what} is not an http(s) URL with a host", retryable=False)
            try:
                policy.check_host(current.raw_host)
                response = await session.get(current, allow_redirects=False)
            except _Refused as exc:
                if not hop:
                    raise
                raise _Refused(exc.host, exc.reason, f"redirect {hop}: {exc.what}") from None
            async with response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(
                            f"http_{response.status}", f"HTTP {response.status} without Location", retryable=False
                        )
                    current = current.join(_parse(location)).with_fragment(None)
                    continue
                if not 200 <= response.status < 300:
                    raise FetchError(
                        f"http_{response.status}",
                        f"answered HTTP {response.status}",
                        retryable=is_retryable_status(response.status),
                        retry_after_s=retry_after_seconds(response.headers.get("Retry-After")),
                    )
                body = await _read_capped(response, max_bytes)
                return Fetched(str(current), response.status, CIMultiDictProxy(CIMultiDict(response.headers)), body)
        raise FetchError("too_many_redirects", f"more than {self.max_redirects} redirects", retryable=False)


def _parse(url: str) -> URL:
    try:
        return URL(url)
    except (ValueError, TypeError) as exc:
        raise FetchError("invalid_url", f"not a usable URL: {exc}", retryable=False) from None


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, counted as it arrives: Content-Length may be absent or smaller than what the
    decompressed body turns out to be, so it can only ever refuse early, never admit."""
    too_large = FetchError("too_large", f"larger than {max_bytes} bytes", retryable=False)
    if (
        response.content_length is not None
        and response.content_length > max_bytes
        and not response.headers.get("Content-Encoding")
    ):
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)
