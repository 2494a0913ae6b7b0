"""The fetcher for URLs that messages name (gateway/helpers/fetch.py), against real HTTP servers.

The servers listen on 127.0.0.1 (and 127.0.0.2 for the rebinding test) and stand for what an
attacker would point the gateway at: the metadata service, an intranet admin page. Each counts the
requests it got, so "refused" also means "never connected". Names are resolved by ``Hosts``, a
resolver the fetcher vets like any other (the fetcher itself is never mocked); the allowlist is how
tests reach their own loopback servers, exactly as an operator would allow an intranet file server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.config import ConfigError, config_from_dict
from gateway.helpers.fetch import Allowlist, FetchError, UrlFetcher, address_problem

PDF = b"%PDF-1.4\n% receipt\n" + bytes(range(256))
MB = 1024 * 1024


class Hosts(AbstractResolver):
    """A hosts file for the test: names map to addresses, each lookup may answer differently
    (``answers`` is consumed in order, the last one repeats); every lookup is recorded."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    def add(self, name: str, *answers: str) -> None:
        self.names[name] = list(answers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self.names.get(host.rstrip("."))
        if answers is None:
            raise OSError(socket.EAI_NONAME, f"unknown host {host}")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in answer.split(",")  # "a,b": a name with several addresses
        ]

    async def close(self) -> None:
        pass


@dataclass
class Server:
    """A local HTTP server; ``hits`` lists the paths it was asked for."""

    host: str
    port: int = 0
    hits: list[str] = field(default_factory=list)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def serving(
    routes: Callable[[Server], list[web.RouteDef]], host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Server]:
    server = Server(host)

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        server.hits.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[count])
    app.add_routes(routes(server))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        pytest.skip(f"cannot listen on {host}: {exc}")
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


def files(server: Server) -> list[web.RouteDef]:
    """A file server: a receipt, redirects, and bodies bigger than they say."""

    async def receipt(request: web.Request) -> web.Response:
        return web.Response(body=PDF, content_type="application/pdf")

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query.get("status", "302")), headers={"Location": request.query["to"]})

    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/loop"})

    async def endless(request: web.Request) -> web.StreamResponse:
        """Chunked, no Content-Length, never ends by itself (stops at 64 MB so a broken client
        cannot keep it busy forever)."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):
                await response.write(chunk)
        return response

    async def bomb(request: web.Request) -> web.Response:
        """8 MB of zeros in a few kilobytes of gzip: Content-Length is the small, compressed size."""
        body = gzip.compress(bytes(8 * MB))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/pdf"})

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 * MB)})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(b"x" * 1024)
        return response

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), headers={"Retry-After": "7"})

    return [
        web.get("/receipt.pdf", receipt),
        web.get("/redirect", redirect),
        web.get("/loop", loop),
        web.get("/endless", endless),
        web.get("/bomb", bomb),
        web.get("/huge", huge),
        web.get("/status/{code}", status),
    ]


def secret(server: Server) -> list[web.RouteDef]:
    """What must never be read: the stand-in for a metadata service or an intranet admin page."""

    async def credentials(request: web.Request) -> web.Response:
        return web.Response(text="AKIA-secret-credentials")

    return [web.get("/latest/meta-data/iam", credentials), web.get("/receipt.pdf", credentials)]


async def refused(fetcher: UrlFetcher, url: str, max_bytes: int = MB) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(url, max_bytes=max_bytes, timeout_s=30)
    return caught.value


# --- addresses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.251", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104  (an address to refuse, not to bind)
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),
        ("192.0.0.192", "reserved"),
        ("198.18.0.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("100::1", "reserved"),
        # IPv4 inside IPv6 is judged by the IPv4 address it stands for.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "100.63.255.255", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_allowlist_entries() -> None:
    allow = Allowlist.parse(["10.20.0.0/16", "127.0.0.1", "Files.Corp.Example.", "*.intranet.example", "fd12::/48"])
    assert allow.allows_address(ipaddress.ip_address("10.20.9.9"))
    assert not allow.allows_address(ipaddress.ip_address("10.21.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))  # the mapped form of an allowed one
    assert allow.allows_address(ipaddress.ip_address("fd12::5"))
    assert allow.allows_host("files.corp.example") and allow.allows_host("FILES.corp.example.")
    assert allow.allows_host("a.b.intranet.example") and not allow.allows_host("intranet.example")
    assert not allow.allows_host("evil-files.corp.example")
    for bad in ("http://files.example", "10.0.0.0/33", "", "*.", "files example", "1.2.3"):
        with pytest.raises(ValueError, match="neither a CIDR"):
            Allowlist.parse([bad])


def test_the_allowlist_is_a_setting_checked_at_start() -> None:
    config = config_from_dict({"fetch": {"allow": ["10.20.0.0/16", "files.corp.example"], "max_redirects": 2}})
    assert config.fetch.allow == ["10.20.0.0/16", "files.corp.example"] and config.fetch.max_redirects == 2
    assert config_from_dict({}).fetch.allow == []
    with pytest.raises(ConfigError, match=r"^fetch: 'https://files.corp.example' is neither a CIDR"):
        config_from_dict({"fetch": {"allow": ["https://files.corp.example"]}})


# --- refused before or at connect --------------------------------------------------------------------


async def test_loopback_url_is_refused_without_connecting() -> None:
    async with serving(secret) as target:
        fetcher = UrlFetcher()
        error = await refused(fetcher, target.url("/latest/meta-data/iam"))
        mapped = await refused(fetcher, target.url("/latest/meta-data/iam", host="[::ffff:127.0.0.1]"))
    assert error.code == "refused" and not error.retryable
    assert error.message == "127.0.0.1 is a loopback address: not fetched unless [fetch] allow lists it"
    assert mapped.code == "refused" and "loopback" in mapped.message
    assert target.hits == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.5/admin", "private"),
        ("https://192.168.0.1/", "private"),
        ("http://100.64.1.1/", "carrier-grade NAT"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
    ],
)
async def test_private_literal_addresses_are_refused(url: str, reason: str) -> None:
    hosts = Hosts()
    error = await refused(UrlFetcher(resolver=hosts), url)
    assert error.code == "refused" and f" {reason} address" in error.message
    assert hosts.lookups == []  # decided from the URL alone


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST.", "app.localhost", "metadata.google.internal", "metadata", "instance-data"]
)
async def test_local_and_metadata_names_are_refused_before_any_lookup(host: str) -> None:
    hosts = Hosts()
    hosts.add(host.lower().rstrip("."), "93.184.215.14")  # even if DNS said it was public
    error = await refused(UrlFetcher(resolver=hosts), f"http://{host}/computeMetadata/v1/")
    assert error.code == "refused" and "names this machine or a cloud metadata service" in error.message
    assert hosts.lookups == []


async def test_a_public_looking_name_that_resolves_to_a_private_address_is_refused() -> None:
    async with serving(secret) as target:
        hosts = Hosts()
        hosts.add("cdn.shop-files.example", "127.0.0.1")
        hosts.add("assets.shop-files.example", "10.0.3.7")
        fetcher = UrlFetcher(resolver=hosts)
        loopback = await refused(fetcher, target.url("/receipt.pdf", host="cdn.shop-files.example"))
        private = await refused(fetcher, target.url("/receipt.pdf", host="assets.shop-files.example"))
    assert loopback.code == "refused"
    assert loopback.message.startswith("cdn.shop-files.example resolves to 127.0.0.1, a loopback address")
    assert private.message.startswith("assets.shop-files.example resolves to 10.0.3.7, a private address")
    assert target.hits == []


async def test_numeric_tricks_resolve_to_what_they_mean() -> None:
    """Hex forms go to the (system) resolver, which reads them as the address they denote: refused
    like it. Single-number, shortened and octal forms never reach a resolver: refused as such."""
    async with serving(secret) as target:
        fetcher = UrlFetcher()
        hexadecimal = [await refused(fetcher, target.url("/", host=h)) for h in ("0x7f.0.0.1", "0x7f000001")]
        other = [await refused(fetcher, target.url("/", host=h)) for h in ("2130706433", "127.1", "0177.0.0.1")]
    assert [e.message.split(",")[1] for e in hexadecimal] == [
        " a loopback address: not fetched unless [fetch] allow lists it"
    ] * 2
    assert [(e.code, e.message) for e in other] == [
        ("invalid_url", "2130706433 is not a canonical IP address"),
        ("invalid_url", "127.1 is not a canonical IP address"),
        ("invalid_url", "0177.0.0.1 is not a canonical IP address"),
    ]
    assert target.hits == []


async def test_the_address_checked_is_the_address_connected_to() -> None:
    """DNS rebinding: the name answers an allowed address first and the secret one afterwards. The
    fetcher resolves once per connection, in the connector, so it connects to what it checked."""
    async with serving(files) as allowed, serving(secret, host="127.0.0.2", port=allowed.port) as target:
        # The same port on both addresses: connecting to the second answer would reach the secret.
        hosts = Hosts()
        hosts.add("files.rebind.example", "127.0.0.1", "127.0.0.2")
        fetcher = UrlFetcher(allow=Allowlist.parse(["127.0.0.1"]), resolver=hosts)
        fetched = await fetcher.fetch(allowed.url("/receipt.pdf", host="files.rebind.example"), max_bytes=MB)
        second = await refused(fetcher, allowed.url("/receipt.pdf", host="files.rebind.example"))
    assert fetched.body == PDF and hosts.lookups == ["files.rebind.example", "files.rebind.example"]
    assert second.message.startswith("files.rebind.example resolves to 127.0.0.2, a loopback address")
    assert target.hits == []


async def test_a_name_with_public_and_private_addresses_is_connected_to_on_the_allowed_ones_only() -> None:
    async with serving(files) as allowed, serving(secret, host="127.0.0.2", port=allowed.port) as target:
        hosts = Hosts()
        hosts.add("mixed.shop.example", "127.0.0.2,127.0.0.1")  # the secret one first
        fetcher = UrlFetcher(allow=Allowlist.parse(["127.0.0.1"]), resolver=hosts)
        fetched = await fetcher.fetch(allowed.url("/receipt.pdf", host="mixed.shop.example"), max_bytes=MB)
    assert fetched.body == PDF and target.hits == [] and allowed.hits == ["/receipt.pdf"]


async def test_proxies_from_the_environment_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would do the connecting (to whatever it resolves), so the fetcher never uses one."""
    async with serving(files) as server, serving(secret) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        fetched = await UrlFetcher.from_settings(["127.0.0.1"]).fetch(server.url("/receipt.pdf"), max_bytes=MB)
    assert fetched.body == PDF and proxy.hits == []


# --- redirects ---------------------------------------------------------------------------------------


async def test_redirects_are_checked_on_every_hop() -> None:
    async with serving(files) as allowed, serving(secret) as target:
        hosts = Hosts()
        hosts.add("files.shop.example", "127.0.0.1")  # the allowed source, by name
        hosts.add("internal.shop.example", "127.0.0.1")  # not allowed: same address, other name
        fetcher = UrlFetcher(allow=Allowlist.parse(["files.shop.example"]), resolver=hosts)

        def via(to: str, status: int = 302) -> str:
            return allowed.url(f"/redirect?status={status}&to={to}", host="files.shop.example")

        ok = await fetcher.fetch(via("/receipt.pdf", 301), max_bytes=MB)  # relative, same host: followed
        errors = {
            "literal": await refused(fetcher, via(target.url("/latest/meta-data/iam"))),
            "name": await refused(fetcher, via(target.url("/latest/meta-data/iam", host="internal.shop.example"), 307)),
            "metadata": await refused(fetcher, via("http://169.254.169.254/latest/meta-data/", 308)),
            "scheme": await refused(fetcher, via("file:///etc/passwd", 303)),
            "loop": await refused(fetcher, allowed.url("/loop", host="files.shop.example")),
        }
    assert ok.body == PDF and ok.url.endswith("/receipt.pdf")
    assert errors["literal"].code == "refused"
    assert errors["literal"].message.startswith("redirect 1: 127.0.0.1 is a loopback address")
    assert errors["name"].message.startswith("redirect 1: internal.shop.example resolves to 127.0.0.1, a loopback")
    assert errors["metadata"].message.startswith("redirect 1: 169.254.169.254 is a cloud metadata address")
    assert errors["scheme"].code == "refused" and "not an http(s) URL" in errors["scheme"].message
    assert errors["loop"].code == "too_many_redirects" and not errors["loop"].retryable
    assert target.hits == []
    assert allowed.hits.count("/loop") == 6  # the first request and max_redirects (5) more


# --- size, status, time --------------------------------------------------------------------------------


async def test_the_size_cap_holds_while_streaming() -> None:
    async with serving(files) as server:
        fetcher = UrlFetcher(allow=Allowlist.parse(["127.0.0.1"]))
        endless = await refused(fetcher, server.url("/endless"), max_bytes=MB)  # no Content-Length at all
        bomb = await refused(fetcher, server.url("/bomb"), max_bytes=MB)  # small Content-Length, 8 MB decoded
        declared = await refused(fetcher, server.url("/huge"), max_bytes=MB)  # says 10 MB: refused at once
        exact = await fetcher.fetch(server.url("/receipt.pdf"), max_bytes=len(PDF))
        over = await refused(fetcher, server.url("/receipt.pdf"), max_bytes=len(PDF) - 1)
    for error in (endless, bomb, declared, over):
        assert error.code == "too_large" and not error.retryable
    assert exact.body == PDF and exact.content_type == "application/pdf"


async def test_statuses_and_timeouts_are_classified() -> None:
    gate = asyncio.Event()

    def slow(server: Server) -> list[web.RouteDef]:
        async def never(request: web.Request) -> web.Response:
            await gate.wait()
            return web.Response(text="late")

        return [web.get("/never", never)]

    async with serving(files) as server, serving(slow) as stalled:
        fetcher = UrlFetcher(allow=Allowlist.parse(["127.0.0.0/8"]))
        missing = await refused(fetcher, server.url("/status/404"))
        busy = await refused(fetcher, server.url("/status/503"))
        with pytest.raises(FetchError) as late:
            await fetcher.fetch(stalled.url("/never"), max_bytes=MB, timeout_s=0.2)
        gate.set()
        port = server.port
    down = await refused(fetcher, f"http://127.0.0.1:{port}/receipt.pdf")  # nothing listens there any more
    assert missing.code == "http_404" and not missing.retryable
    assert busy.code == "http_503" and busy.retryable and busy.retry_after_s == 7
    assert late.value.code == "timeout" and late.value.retryable
    assert down.code == "connection" and down.retryable


async def test_the_allowlist_lets_intranet_sources_through() -> None:
    async with serving(files) as server:
        hosts = Hosts()
        hosts.add("files.corp.example", "127.0.0.1")
        hosts.add("a.assets.corp.example", "127.0.0.1")
        by_address = UrlFetcher.from_settings(["127.0.0.1"])
        by_network = UrlFetcher.from_settings(["127.0.0.0/8"])
        by_name = UrlFetcher(allow=Allowlist.parse(["files.corp.example", "*.assets.corp.example"]), resolver=hosts)
        results = [
            await by_address.fetch(server.url("/receipt.pdf"), max_bytes=MB),
            await by_network.fetch(server.url("/receipt.pdf"), max_bytes=MB),
            await by_name.fetch(server.url("/receipt.pdf", host="files.corp.example"), max_bytes=MB),
            await by_name.fetch(server.url("/receipt.pdf", host="a.assets.corp.example"), max_bytes=MB),
        ]
        # Allowing a name does not allow its address under another name, or the literal address.
        literal = await refused(by_name, server.url("/receipt.pdf"))
    assert [r.body for r in results] == [PDF] * 4
    assert literal.code == "refused"
    assert server.hits == ["/receipt.pdf"] * 4
