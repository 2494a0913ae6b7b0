"""Console sign-in through OpenID Connect, against a real local provider.

The fake provider is an aiohttp server on 127.0.0.1 speaking the documented formats (discovery,
JWKS, the authorization endpoint, the token endpoint with client authentication and PKCE). Tests
drive the flow as a browser does: follow the console's redirect to the provider, follow the
provider's redirect back to the callback, then use the session cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote_plus, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.config import Config, ConsoleOidc
from gateway.console.audit import AuditLog
from gateway.console.oidc import OidcLogin
from gateway.model import AuditRecord
from gateway.runtime import Runtime
from tests.conftest import make_config

CLIENT_ID = "gateway-console"
CLIENT_SECRET = "s3cret with spaces&symbols"
Client = TestClient[web.Request, web.Application]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class FakeProvider:
    """An OpenID provider with one user; tests change what it answers through its attributes."""

    client_id: str = CLIENT_ID
    client_secret: str | None = CLIENT_SECRET
    auth_methods: list[str] | None = None  # None: the field is left out of discovery (basic)
    claims: dict[str, Any] = field(default_factory=lambda: {"preferred_username": "ada", "groups": ["ops"]})
    overrides: dict[str, Any] = field(default_factory=dict)  # claims of the next ID tokens
    forge: str | None = None  # "payload", "hs256", "none", "unknown-key", "unpublished-kid"
    down: bool = False
    token_status: int | None = None  # the token endpoint fails with this status
    discovery_issuer: str | None = None
    keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    jwks_fetches: int = 0
    issuer: str = ""

    def rotate(self) -> str:
        """A new signing key (the old one is withdrawn), as providers rotate them."""
        kid = f"key-{len(self.keys) + 1}"
        self.keys = [(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))]
        return kid

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        document: dict[str, Any] = {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }
        if self.auth_methods is not None:
            document["token_endpoint_auth_methods_supported"] = self.auth_methods
        return web.json_response(document)

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        keys = []
        for kid, key in self.keys:
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        assert query["response_type"] == "code"
        assert query["client_id"] == self.client_id
        assert query["code_challenge_method"] == "S256"
        assert "openid" in query["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = query
        raise web.HTTPFound(f"{query['redirect_uri']}?code={code}&state={query['state']}")

    def _client_authenticated(self, request: web.Request, form: dict[str, str]) -> tuple[bool, str]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            ok = unquote_plus(user) == self.client_id and unquote_plus(password) == self.client_secret
            return ok, "client_secret_basic"
        if "client_secret" in form:
            ok = form.get("client_id") == self.client_id and form["client_secret"] == self.client_secret
            return ok, "client_secret_post"
        return self.client_secret is None and form.get("client_id") == self.client_id, "none"

    async def token(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        authenticated, method = self._client_authenticated(request, form)
        self.token_requests.append({"method": method, "form": form})
        if self.token_status is not None:
            return web.Response(status=self.token_status)
        if not authenticated:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        challenge = _b64(hashlib.sha256(str(form.get("code_verifier", "")).encode()).digest())
        if challenge != grant["code_challenge"]:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        return web.json_response({"access_token": "at", "token_type": "Bearer", "id_token": self.id_token(grant)})

    def id_token(self, grant: dict[str, str]) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "user-123",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **self.claims,
            **self.overrides,
        }
        kid, key = self.keys[0]
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        header, payload, signature = token.split(".")
        if self.forge == "payload":  # a signed token whose claims were changed afterwards
            payload = _b64(json.dumps({**claims, "groups": ["admins"]}).encode())
        elif self.forge in ("unknown-key", "unpublished-kid"):  # signed by a key never published
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ghost = kid if self.forge == "unknown-key" else "ghost"
            return jwt.encode(claims, other, algorithm="RS256", headers={"kid": ghost})
        elif self.forge in ("hs256", "none"):  # the classic algorithm confusions
            public = RSAAlgorithm.to_jwk(key.public_key()).encode()
            alg = "HS256" if self.forge == "hs256" else "none"
            header = _b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
            signing_input = f"{header}.{payload}".encode()
            signature = _b64(hmac.new(public, signing_input, hashlib.sha256).digest()) if alg == "HS256" else ""
        return f"{header}.{payload}.{signature}"


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    fake.rotate()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.issuer = f"http://127.0.0.1:{server.port}"
    try:
        yield fake
    finally:
        await server.close()


@pytest.fixture
def oidc_extra(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings a test adds to [console.oidc] (indirect parametrization)."""
    return cast(dict[str, Any], getattr(request, "param", {}))


@pytest.fixture
def config(kafka_bootstrap: str, redis_url: str, provider: FakeProvider, oidc_extra: dict[str, Any]) -> Config:
    oidc = {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "role_map": {"ops": "operator", "admins": "admin"},
        **oidc_extra,
    }
    return make_config(kafka_bootstrap, redis_url, console={"enabled": True, "oidc": oidc})


@pytest.fixture(autouse=True)
async def _forget_keys(runtime: Runtime) -> AsyncIterator[None]:
    """The test Redis is shared: drop this test's sessions, flows and audit entries afterwards."""
    yield
    store = runtime.store
    keys = [key async for key in store.client.scan_iter(match=f"{store.prefix}*")]
    if keys:
        await store.client.delete(*keys)


async def begin(client: Client) -> str:
    """The console's redirect to the provider."""
    response = await client.get("/console/auth/oidc/login", allow_redirects=False)
    assert response.status == 303
    location = response.headers["Location"]
    assert "/authorize?" in location
    return location


async def authorize(client: Client, location: str) -> str:
    """The provider's redirect back to the console (the user signed in there)."""
    async with client.session.get(location, allow_redirects=False) as response:
        assert response.status == 302
        back = response.headers["Location"]
    parts = urlsplit(back)
    return f"{parts.path}?{parts.query}"


async def finish(client: Client, callback: str) -> aiohttp.ClientResponse:
    return await client.get(callback, allow_redirects=False)


async def sign_in(client: Client) -> aiohttp.ClientResponse:
    return await finish(client, await authorize(client, await begin(client)))


def refused(response: aiohttp.ClientResponse, code: str) -> None:
    assert response.status == 303
    assert response.headers["Location"] == f"/console/#/login?error={code}"
    assert "gw_console" not in response.cookies or not response.cookies["gw_console"].value


async def audit(runtime: Runtime) -> list[AuditRecord]:
    return await AuditLog(runtime).latest(20)


async def test_sign_in(client: Client, runtime: Runtime, provider: FakeProvider) -> None:
    response = await sign_in(client)
    assert response.status == 303
    assert response.headers["Location"] == "/console/"
    assert response.cookies["gw_console"].value

    session = await client.get("/console/api/session")
    assert session.status == 200
    body = await session.json()
    assert (body["user"], body["role"], body["via"]) == ("ada", "operator", "oidc")

    (asked,) = provider.authorize_requests
    assert asked["scope"] == "openid profile email"
    assert asked["redirect_uri"] == str(client.make_url("/console/auth/oidc/callback"))
    assert asked["nonce"] and asked["state"] and asked["code_challenge"]
    (exchange,) = provider.token_requests
    assert exchange["method"] == "client_secret_basic"  # discovery names no method: the default
    assert "client_secret" not in exchange["form"]

    entry = (await audit(runtime))[0]
    assert (entry.action, entry.actor, entry.role, entry.via, entry.outcome) == (
        "login",
        "ada",
        "operator",
        "oidc",
        "ok",
    )
    # Nothing of the flow's secrets is kept: the state was taken once.
    store = runtime.store
    assert [key async for key in store.client.scan_iter(match=store.key("console", "oidc", "*"))] == []


@pytest.mark.parametrize("methods", [["client_secret_post"], ["client_secret_basic", "client_secret_post"]])
async def test_client_authentication_follows_discovery(
    client: Client, provider: FakeProvider, methods: list[str]
) -> None:
    provider.auth_methods = methods
    assert (await sign_in(client)).headers["Location"] == "/console/"
    expected = "client_secret_post" if methods == ["client_secret_post"] else "client_secret_basic"
    assert provider.token_requests[0]["method"] == expected


@pytest.mark.parametrize("oidc_extra", [{"client_secret": None}], indirect=True)
async def test_public_client_sends_only_its_id_and_the_verifier(client: Client, provider: FakeProvider) -> None:
    provider.client_secret = None
    assert (await sign_in(client)).headers["Location"] == "/console/"
    (exchange,) = provider.token_requests
    assert exchange["method"] == "none"
    assert exchange["form"]["client_id"] == CLIENT_ID and exchange["form"]["code_verifier"]


async def test_wrong_state_is_refused(client: Client, runtime: Runtime, provider: FakeProvider) -> None:
    callback = await authorize(client, await begin(client))
    forged = callback.replace("state=", "state=x")
    refused(await finish(client, forged), "invalid_state")
    assert provider.token_requests == []  # the code was never exchanged
    assert (await client.get("/console/api/session")).status == 401
    entry = (await audit(runtime))[0]
    assert (entry.action, entry.outcome) == ("login_failed", "denied")
    assert entry.detail is not None and "state" in entry.detail


async def test_reused_state_is_refused(client: Client, provider: FakeProvider) -> None:
    callback = await authorize(client, await begin(client))
    assert (await finish(client, callback)).headers["Location"] == "/console/"
    refused(await finish(client, callback), "invalid_state")
    assert len(provider.token_requests) == 1


async def test_flow_started_in_another_browser_is_refused(client: Client, provider: FakeProvider) -> None:
    """A login CSRF: the attacker's own callback URL opened in the victim's browser."""
    callback = await authorize(client, await begin(client))
    async with (
        aiohttp.ClientSession() as victim,
        victim.get(client.make_url(callback), allow_redirects=False) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"] == "/console/#/login?error=invalid_state"
    assert provider.token_requests == []


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        ("payload", "Signature verification failed"),
        ("unknown-key", "Signature verification failed"),
        ("hs256", "algorithm 'HS256' is not allowed"),
        ("none", "algorithm 'none' is not allowed"),
    ],
)
async def test_forged_id_token_is_refused(
    client: Client, runtime: Runtime, provider: FakeProvider, forge: str, reason: str
) -> None:
    provider.forge = forge
    refused(await sign_in(client), "invalid_token")
    assert (await client.get("/console/api/session")).status == 401
    entry = (await audit(runtime))[0]
    assert (entry.action, entry.outcome) == ("login_failed", "denied")
    assert entry.detail is not None and reason in entry.detail


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"nonce": "another-flow"}, "nonce does not match"),
        ({"aud": "another-client"}, "InvalidAudienceError"),
        ({"aud": [CLIENT_ID, "another-client"]}, "another party (azp)"),  # several audiences, no azp
        ({"azp": "another-client"}, "another party (azp)"),
        ({"iss": "https://elsewhere.example"}, "InvalidIssuerError"),
        ({"exp": 1_000_000_000, "iat": 999_999_000}, "ExpiredSignatureError"),  # 2001
        ({"iat": 4_000_000_000}, "ImmatureSignatureError"),  # 2096
    ],
)
async def test_id_token_claims_are_checked(
    client: Client, runtime: Runtime, provider: FakeProvider, overrides: dict[str, Any], reason: str
) -> None:
    provider.overrides = overrides
    refused(await sign_in(client), "invalid_token")
    entry = (await audit(runtime))[0]
    assert entry.action == "login_failed"
    assert entry.detail is not None and reason in entry.detail
    assert "eyJ" not in entry.detail  # never the token itself


async def test_user_without_mapped_group_is_refused(client: Client, runtime: Runtime, provider: FakeProvider) -> None:
    provider.claims = {"preferred_username": "bob", "groups": ["sales"]}
    refused(await sign_in(client), "no_role")
    entry = (await audit(runtime))[0]
    assert (entry.action, entry.actor, entry.outcome) == ("login_failed", "bob", "denied")


@pytest.mark.parametrize("oidc_extra", [{"default_role": "viewer"}], indirect=True)
async def test_default_role_lets_unmapped_users_in(client: Client, provider: FakeProvider) -> None:
    provider.claims = {"email": "bob@example.com", "groups": ["sales"]}  # no preferred_username
    assert (await sign_in(client)).headers["Location"] == "/console/"
    body = await (await client.get("/console/api/session")).json()
    assert (body["user"], body["role"], body["via"]) == ("bob@example.com", "viewer", "oidc")


async def test_highest_mapped_role_wins(client: Client, provider: FakeProvider) -> None:
    provider.claims = {"preferred_username": "ada", "groups": ["ops", "admins", "sales"]}
    await sign_in(client)
    body = await (await client.get("/console/api/session")).json()
    assert body["role"] == "admin"


async def test_key_rotation(client: Client, provider: FakeProvider) -> None:
    assert (await sign_in(client)).headers["Location"] == "/console/"
    assert provider.jwks_fetches == 1
    assert (await sign_in(client)).headers["Location"] == "/console/"
    assert provider.jwks_fetches == 1  # cached
    provider.rotate()
    assert (await sign_in(client)).headers["Location"] == "/console/"
    assert provider.jwks_fetches == 2  # the unknown kid fetched the keys again, once
    provider.forge = "unpublished-kid"
    refused(await sign_in(client), "invalid_token")
    assert provider.jwks_fetches == 3  # one more try, then refused


async def test_provider_error_is_refused(client: Client, runtime: Runtime) -> None:
    location = await begin(client)
    state = parse_qs(urlsplit(location).query)["state"][0]
    response = await finish(
        client, f"/console/auth/oidc/callback?error=access_denied&error_description=secret+stuff&state={state}"
    )
    refused(response, "provider_error")
    entry = (await audit(runtime))[0]
    assert entry.action == "login_failed" and entry.detail is not None
    assert "access_denied" in entry.detail and "secret" not in entry.detail
    store = runtime.store
    assert [key async for key in store.client.scan_iter(match=store.key("console", "oidc", "*"))] == []


async def test_provider_down(client: Client, provider: FakeProvider) -> None:
    provider.down = True
    refused(await client.get("/console/auth/oidc/login", allow_redirects=False), "provider_unavailable")


async def test_token_endpoint_down(client: Client, runtime: Runtime, provider: FakeProvider) -> None:
    provider.token_status = 502
    refused(await sign_in(client), "provider_unavailable")
    entry = (await audit(runtime))[0]
    assert (entry.action, entry.outcome) == ("login_failed", "failed")


async def test_discovery_naming_another_issuer_is_not_used(client: Client, provider: FakeProvider) -> None:
    provider.discovery_issuer = "https://evil.example"
    refused(await client.get("/console/auth/oidc/login", allow_redirects=False), "provider_unavailable")


async def test_token_endpoint_refusal(client: Client, runtime: Runtime, provider: FakeProvider) -> None:
    provider.client_secret = "rotated-at-the-provider"
    refused(await sign_in(client), "token_refused")
    entry = (await audit(runtime))[0]
    assert entry.detail is not None and "invalid_client" in entry.detail
    assert CLIENT_SECRET not in entry.detail


@pytest.mark.parametrize(
    "oidc_extra", [{"redirect_url": "https://console.example/console/auth/oidc/callback"}], indirect=True
)
async def test_configured_redirect_url(client: Client) -> None:
    location = await begin(client)
    assert parse_qs(urlsplit(location).query)["redirect_uri"] == ["https://console.example/console/auth/oidc/callback"]


def test_roles_from_nested_or_single_claims() -> None:
    settings = ConsoleOidc(
        issuer="https://id.example",
        client_id=CLIENT_ID,
        roles_claim="realm_access.roles",
        role_map={"gateway-admin": "admin", "gateway-ops": "operator"},
    )
    login = OidcLogin(cast(Any, None), settings)
    assert login.role_of({"realm_access": {"roles": ["offline_access", "gateway-ops"]}}) == "operator"
    assert login.role_of({"realm_access.roles": "gateway-admin"}) == "admin"
    assert login.role_of({"realm_access": {"roles": "nothing"}}) is None
    assert login.role_of({}) is None
