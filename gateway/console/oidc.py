"""Console sign-in through an OpenID Connect provider: the authorization code flow with PKCE.

The flow's secrets (state, nonce, PKCE verifier) wait in Redis under the SHA-256 of the state for
ten minutes and are taken once (GETDEL), so any `serve` replica can finish a flow another started
and a replayed callback finds nothing. The state is also bound to the browser that started the
flow by a short-lived cookie, so nobody can complete their own flow in someone else's browser
(a login CSRF). The ID token is verified here (signature against the provider's JWKS, issuer,
audience, times, nonce) even though it comes straight from the token endpoint: the check is cheap
and does not depend on every proxy on the way doing TLS right.

Nothing secret is ever logged, audited or put in a redirect: failures carry a short code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
import msgspec
import structlog
from aiohttp import web

from gateway.config import ConsoleOidc, ConsoleRole
from gateway.console.auth import highest_role

if TYPE_CHECKING:
    from gateway.console.core import Console

log = structlog.get_logger(__name__)

FLOW_TTL_S = 600
DISCOVERY_TTL_S = 3600
JWKS_TTL_S = 3600
TIMEOUT_S = 10.0
LEEWAY_S = 60
MAX_DOCUMENT_BYTES = 1024 * 1024
BINDING_COOKIE = "gw_console_oidc"
CALLBACK_PATH = "/console/auth/oidc/callback"
# Asymmetric algorithms only: never "none", never HS* (its "secret" would be a public key).
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


class ProviderUnavailable(Exception):
    """The provider did not answer, or answered with something unusable; the message is safe to log."""


class Refused(Exception):
    """A sign-in refused: ``code`` goes into the redirect, ``detail`` into the audit entry."""

    def __init__(self, code: str, detail: str, actor: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.actor = actor


class _Discovery(msgspec.Struct, kw_only=True):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    # OpenID Connect Discovery 1.0: absent means client_secret_basic.
    token_endpoint_auth_methods_supported: list[str] = msgspec.field(default_factory=lambda: ["client_secret_basic"])


class _Flow(msgspec.Struct, kw_only=True):
    nonce: str
    verifier: str
    redirect_uri: str
    binding: str  # SHA-256 of the browser's binding cookie


class _TokenAnswer(msgspec.Struct, kw_only=True):
    id_token: str


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _safe(value: str, limit: int = 64) -> str:
    """A provider-supplied word fit for an audit entry: printable ASCII, short."""
    return "".join(c for c in value if c.isascii() and c.isprintable())[:limit]


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _user_name(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable():
        return value
    return None


class OidcLogin:
    """The two endpoints of the flow, plus cached discovery and JWKS (one HTTP session per process)."""

    def __init__(self, console: Console, settings: ConsoleOidc) -> None:
        self.console = console
        self.settings = settings
        self.issuer = settings.issuer
        self._http: aiohttp.ClientSession | None = None
        self._discovery: tuple[float, _Discovery] | None = None
        self._jwks: tuple[float, list[dict[str, Any]]] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Release the provider connection pool (the console app's cleanup calls this)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # Provider documents -----------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._http

    async def _get_json(self, url: str, what: str) -> bytes:
        try:
            async with self._session().get(url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise ProviderUnavailable(f"{what}: HTTP {response.status}")
                return await _read_limited(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{what}: {type(exc).__name__}") from None

    async def discovery(self) -> _Discovery:
        """The provider's configuration, fetched at most once an hour; its issuer must be ours
        (a document naming another issuer would let that issuer's tokens in)."""
        cached = self._discovery
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
        async with self._lock:
            cached = self._discovery
            if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
                return cached[1]
            url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
            body = await self._get_json(url, "discovery")
            try:
                document = msgspec.json.decode(body, type=_Discovery)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise ProviderUnavailable(f"discovery: invalid document ({exc})") from None
            if document.issuer != self.issuer:
                raise ProviderUnavailable(f"discovery: issuer {document.issuer!r} is not the configured one")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not getattr(document, name).startswith(("https://", "http://")):
                    raise ProviderUnavailable(f"discovery: {name} is not an HTTP(S) URL")
            self._discovery = (time.monotonic(), document)
            return document

    async def jwks(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The provider's signing keys (raw JWKs), cached for an hour; ``refresh`` fetches them
        again, which an unknown ``kid`` asks for (the provider rotated its keys)."""
        cached = self._jwks
        if not refresh and cached is not None and time.monotonic() - cached[0] < JWKS_TTL_S:
            return cached[1]
        document = await self.discovery()
        async with self._lock:
            if self._jwks is not cached and self._jwks is not None:  # another request just fetched them
                return self._jwks[1]
            body = await self._get_json(document.jwks_uri, "jwks")
            try:
                keys = msgspec.json.decode(body, type=dict[str, Any]).get("keys")
            except (msgspec.ValidationError, msgspec.DecodeError):
                keys = None
            if not isinstance(keys, list):
                raise ProviderUnavailable("jwks: no key list")
            usable = [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"]
            self._jwks = (time.monotonic(), usable)
            return usable

    # The flow ---------------------------------------------------------------------------------

    def redirect_uri(self, request: web.Request) -> str:
        return self.settings.redirect_url or f"{self.console.auth.origin(request)}{CALLBACK_PATH}"

    async def start(self, request: web.Request) -> web.StreamResponse:
        """Send the browser to the provider, with a fresh state, nonce and PKCE challenge."""
        try:
            document = await self.discovery()
        except ProviderUnavailable as exc:
            log.warning("console_oidc_provider_unavailable", step="start", error=str(exc))
            return self._failed(request, "provider_unavailable")
        state, nonce, verifier, binding = (secrets.token_urlsafe(32) for _ in range(4))
        redirect_uri = self.redirect_uri(request)
        flow = _Flow(nonce=nonce, verifier=verifier, redirect_uri=redirect_uri, binding=_digest(binding))
        await self.console.runtime.store.client.set(self._flow_key(state), msgspec.json.encode(flow), ex=FLOW_TTL_S)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": _challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in document.authorization_endpoint else "?"
        location = f"{document.authorization_endpoint}{separator}{query}"
        response = web.Response(status=303, headers={"Location": location})
        # Lax, not Strict: the provider's redirect back is a cross-site navigation.
        response.set_cookie(
            BINDING_COOKIE,
            binding,
            max_age=FLOW_TTL_S,
            path="/console/auth/oidc",
            httponly=True,
            secure=self.console.auth.secure(request),
            samesite="Lax",
        )
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """Finish the flow: the state (once), the code exchange, the ID token, then a session."""
        try:
            user, role = await self._finish(request)
        except Refused as refused:
            await self.console.record(
                request, "login_failed", None, actor=refused.actor[:64], outcome="denied", detail=refused.detail
            )
            return self._failed(request, refused.code)
        except ProviderUnavailable as exc:
            log.warning("console_oidc_provider_unavailable", step="callback", error=str(exc))
            await self.console.record(
                request, "login_failed", None, actor="", outcome="failed", detail=f"oidc: provider unavailable ({exc})"
            )
            return self._failed(request, "provider_unavailable")
        response = await self.console.start_session(request, user, role, "oidc", "/console/")
        self._clear_binding(response, request)
        return response

    async def _finish(self, request: web.Request) -> tuple[str, ConsoleRole]:
        query = request.query
        if "error" in query:
            if 0 < len(query.get("state", "")) <= 256:  # the flow is over: forget its secrets now
                await self.console.runtime.store.client.delete(self._flow_key(query["state"]))
            # The provider's error code is a registered word (access_denied...); its description is
            # free text and stays out of the audit trail.
            raise Refused("provider_error", f"oidc: the provider answered {_safe(query['error'])!r}")
        state, code = query.get("state", ""), query.get("code", "")
        if not state or not code or len(state) > 256 or len(code) > 4096:
            raise Refused("invalid_request", "oidc: callback without code or state")
        raw = await self.console.runtime.store.client.getdel(self._flow_key(state))
        if raw is None:
            raise Refused("invalid_state", "oidc: unknown, expired or already used state")
        flow = msgspec.json.decode(raw, type=_Flow)
        binding = request.cookies.get(BINDING_COOKIE, "")
        if not hmac.compare_digest(_digest(binding).encode(), flow.binding.encode()):
            raise Refused("invalid_state", "oidc: the flow was started in another browser")
        id_token = await self._exchange(code, flow)
        claims = await self._verify(id_token, flow.nonce)
        user = next(
            filter(None, (_user_name(claims.get(n)) for n in (self.settings.username_claim, "email", "sub"))), None
        )
        if user is None:
            raise Refused("invalid_token", "oidc: the ID token names no user")
        role = self.role_of(claims)
        if role is None:
            raise Refused("no_role", "oidc: no console role mapped for this user", actor=user)
        return user, role

    def role_of(self, claims: dict[str, Any]) -> ConsoleRole | None:
        """The highest console role the user's groups map to, else the default role (or None)."""
        value = _claim(claims, self.settings.roles_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        mapped = [self.settings.role_map[v] for v in values if isinstance(v, str) and v in self.settings.role_map]
        return highest_role(mapped) or self.settings.default_role

    async def _exchange(self, code: str, flow: _Flow) -> str:
        """The code for tokens at the token endpoint, with the PKCE verifier and client authentication."""
        document = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.client_secret
        methods = document.token_endpoint_auth_methods_supported
        if secret is None:
            form["client_id"] = self.settings.client_id
        elif "client_secret_post" in methods and "client_secret_basic" not in methods:
            form |= {"client_id": self.settings.client_id, "client_secret": secret}
        else:  # RFC 6749 2.3.1: both parts form-encoded before the Basic encoding
            pair = f"{quote(self.settings.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with self._session().post(
                document.token_endpoint,
                data=form,
                headers=headers,
                allow_redirects=False,
            ) as response:
                body = await _read_limited(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"token: {type(exc).__name__}") from None
        if status >= 500:
            raise ProviderUnavailable(f"token: HTTP {status}")
        if status != 200:
            error = ""
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                error = str(msgspec.json.decode(body, type=dict[str, Any]).get("error", ""))
            raise Refused("token_refused", f"oidc: the token endpoint refused the code (HTTP {status} {_safe(error)})")
        try:
            return msgspec.json.decode(body, type=_TokenAnswer).id_token
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise Refused("invalid_token", "oidc: the token endpoint returned no ID token") from None

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise Refused("invalid_token", "oidc: the ID token is malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Refused("invalid_token", f"oidc: ID token algorithm {_safe(str(alg))!r} is not allowed")
        keys = self._keys_for(await self.jwks(), alg, kid)
        if not keys and kid is not None:
            keys = self._keys_for(await self.jwks(refresh=True), alg, kid)
        if not keys:
            raise Refused("invalid_token", f"oidc: no provider key for the ID token (kid {_safe(str(kid))!r})")
        claims: dict[str, Any] | None = None
        error: jwt.PyJWTError | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    id_token,
                    key,
                    algorithms=[alg],
                    audience=self.settings.client_id,
                    issuer=self.issuer,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "aud", "exp", "iat", "sub"]},
                )
                break
            except jwt.InvalidSignatureError as exc:
                error = exc  # maybe another key without a kid
            except jwt.PyJWTError as exc:
                error = exc
                break
        if claims is None:
            raise Refused("invalid_token", f"oidc: invalid ID token ({type(error).__name__}: {error})")
        audience = claims["aud"]
        azp = claims.get("azp")
        if (azp is not None and azp != self.settings.client_id) or (
            isinstance(audience, list) and len(audience) > 1 and azp is None
        ):
            raise Refused("invalid_token", "oidc: the ID token was issued to another party (azp)")
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
            raise Refused("invalid_token", "oidc: the ID token's nonce does not match")
        return claims

    @staticmethod
    def _keys_for(jwks: list[dict[str, Any]], alg: str, kid: Any) -> list[jwt.PyJWK]:
        """The keys that may have signed a token with this header, bound to its algorithm (a key
        whose JWK names another ``alg``, or of another type, is skipped)."""
        found = []
        for data in jwks:
            if kid is not None and data.get("kid") != kid:
                continue
            if data.get("alg", alg) != alg:
                continue
            try:
                found.append(jwt.PyJWK(data, algorithm=alg))
            except jwt.PyJWTError:
                continue
        return found

    # Helpers ----------------------------------------------------------------------------------

    def _flow_key(self, state: str) -> str:
        return self.console.runtime.store.key("console", "oidc", _digest(state))

    def _failed(self, request: web.Request, code: str) -> web.Response:
        response = web.Response(status=303, headers={"Location": f"/console/#/login?error={code}"})
        self._clear_binding(response, request)
        return response

    def _clear_binding(self, response: web.StreamResponse, request: web.Request) -> None:
        if BINDING_COOKIE in request.cookies:
            response.del_cookie(BINDING_COOKIE, path="/console/auth/oidc")


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """The body, refusing more than MAX_DOCUMENT_BYTES (a provider document is a few kilobytes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise ProviderUnavailable(f"{response.url.path}: answer larger than {MAX_DOCUMENT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
