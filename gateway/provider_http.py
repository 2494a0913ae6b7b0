"""Calling provider APIs from ``Channel.send``: one place that turns HTTP outcomes into SendError.

Every provider answers failure differently in its body, but the retry decision is the same
everywhere: 429, 408 and 5xx are worth retrying (honouring Retry-After), connection problems and
timeouts too, any other 4xx is permanent. Adapters pass a ``describe`` function that pulls the
provider's own error code and text out of the body, so DLQ records and failed events carry them.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from gateway.channel import SendError

DEFAULT_TIMEOUT_S = 30.0
RETRYABLE_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The decoded JSON body, or None when the body is not JSON."""
        try:
            return msgspec.json.decode(self.body) if self.body else None
        except msgspec.DecodeError:
            return None


# (status, decoded JSON body or None) -> (code, message, retryable override or None), or None
Describe = Callable[[int, Any], "tuple[str, str, bool | None] | None"]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None when absent or unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth (Twilio, Mailgun...)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def raise_for_response(provider: str, response: ProviderResponse, describe: Describe | None = None) -> None:
    """Raise SendError unless the response is a success (2xx)."""
    if 200 <= response.status < 300:
        return
    retryable = is_retryable_status(response.status)
    code, text = f"http_{response.status}", f"{provider} answered HTTP {response.status}"
    detail = describe(response.status, response.json()) if describe is not None else None
    if detail is not None:
        code, text, override = detail
        if override is not None:
            retryable = override
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    raise SendError(code, text, retryable=retryable, retry_after_s=retry_after)


async def call_provider(
    http: aiohttp.ClientSession | None,
    method: str,
    url: str,
    *,
    provider: str,
    json: Any = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    describe: Describe | None = None,
    accept: Collection[int] = (),
    secrets: Collection[str] = (),
) -> ProviderResponse:
    """Send one request to a provider API; return the 2xx response or raise a classified SendError.

    JSON bodies are encoded with msgspec (``json=``); ``data=`` passes form fields or raw bytes.
    Statuses in ``accept`` are returned too, for non-2xx answers that mean success to the caller
    (LINE's 409 for a push whose retry key was already accepted). ``secrets`` (an access token in
    the URL's query, say) are replaced by ``***`` in the error's message: error texts can quote the
    request, and they end up in delivery events and logs.
    """
    try:
        return await _call(http, method, url, provider, json, data, headers, timeout_s, describe, accept)
    except SendError as exc:
        message = exc.message
        for secret in secrets:
            if secret:
                message = message.replace(secret, "***")
        if message == exc.message:
            raise
        raise SendError(exc.code, message, retryable=exc.retryable, retry_after_s=exc.retry_after_s) from None


async def _call(
    http: aiohttp.ClientSession | None,
    method: str,
    url: str,
    provider: str,
    json: Any,
    data: Any,
    headers: Mapping[str, str] | None,
    timeout_s: float,
    describe: Describe | None,
    accept: Collection[int],
) -> ProviderResponse:
    if http is None:
        raise SendError("no_http_session", "this process has no HTTP client for sending", retryable=False)
    request_headers = dict(headers or {})
    body: Any = data
    if json is not None:
        body = msgspec.json.encode(json)
        request_headers.setdefault("Content-Type", "application/json")
    try:
        async with http.request(
            method,
            url,
            data=body,
            headers=request_headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as raw:
            response = ProviderResponse(raw.status, dict(raw.headers), await raw.read())
    except TimeoutError as exc:
        raise SendError("timeout", f"{provider} did not answer within {timeout_s:g}s", retryable=True) from exc
    except aiohttp.ClientError as exc:
        raise SendError("connection", f"{provider}: {type(exc).__name__}: {exc}", retryable=True) from exc
    if response.status not in accept:
        raise_for_response(provider, response, describe)
    return response
