"""W3C Trace Context (traceparent) so a message can be followed from webhook to delivery, and the
switch for OpenTelemetry traces (docs/tracing.md).

Every record carries a ``traceparent`` header whether tracing is on or not. With tracing off (the
default) nothing of OpenTelemetry is imported: components see ``runtime.tracing is None`` and take
the path they always took; the few places that would open a span get ``NO_SPAN``, a shared object
whose ``with`` does nothing. With tracing on, ``gateway.otel`` (the ``otel`` extra) records spans
and the traceparent of each record names the span that produced it, so serve, worker and dispatch
spans of one customer message form one trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from gateway.config import Config, ConfigError

if TYPE_CHECKING:
    from gateway.otel import OtelTracing

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# The exporters gateway.otel builds from OTEL_TRACES_EXPORTER; "none" (or unset) exports nothing.
EXPORTERS = frozenset({"otlp", "console"})


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of a valid traceparent, else None (all-zero ids are invalid)."""
    if value:
        match = _TRACEPARENT.match(value.strip().lower())
        if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
            return match.group(1), match.group(2), match.group(3)
    return None


def child_traceparent(parent: str | None) -> str:
    """Continue the caller's trace when it sent a valid traceparent, otherwise start a new one."""
    if parent:  # parse_traceparent inlined: this runs for every message
        match = _TRACEPARENT.match(parent.strip().lower())
        if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
            return f"00-{match.group(1)}-{new_span_id()}-{match.group(3)}"
    ids = os.urandom(24).hex()  # trace id and span id from one call
    return f"00-{ids[:32]}-{ids[32:]}-01"


def record_traceparent(tracing: OtelTracing | None, parent: str | None) -> str:
    """The traceparent of a record published now: the current span's with tracing on (see
    ``OtelTracing.traceparent``), else a child of ``parent`` (the caller's), as always."""
    return child_traceparent(parent) if tracing is None else tracing.traceparent(parent)


def trace_id(traceparent: str) -> str | None:
    match = _TRACEPARENT.match(traceparent)
    return match.group(1) if match else None


class SpanHandle(Protocol):
    """What the core may do to an open span: add an attribute, mark it failed (a type or code,
    never a message: error texts can quote the payload)."""

    def set(self, key: str, value: str | int | bool) -> None: ...

    def fail(self, error_type: str) -> None: ...


class _NoSpan:
    """The tracing-off span: a context manager and a handle that do nothing (one shared instance)."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set(self, key: str, value: str | int | bool) -> None:
        return None

    def fail(self, error_type: str) -> None:
        return None


NO_SPAN = _NoSpan()


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporters(config: Config, environ: Mapping[str, str]) -> list[str]:
    """The span exporters asked for; empty: tracing is off.

    ``OTEL_SDK_DISABLED=true`` turns tracing off whatever else says; then ``OTEL_TRACES_EXPORTER``
    decides when set (``otlp``, ``console``, both comma-separated, or ``none``); otherwise
    ``[gateway] tracing = "otel"`` means OTLP.
    """
    if _true(environ.get("OTEL_SDK_DISABLED")):
        return []
    named = environ.get("OTEL_TRACES_EXPORTER")
    if named is None or not named.strip():
        return ["otlp"] if config.gateway.tracing == "otel" else []
    chosen = [name.strip().lower() for name in named.split(",") if name.strip()]
    if "none" in chosen:
        return []
    unknown = [name for name in chosen if name not in EXPORTERS]
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter {unknown[0]!r} (otlp, console or none)")
    return list(dict.fromkeys(chosen))


def start_tracing(config: Config, environ: Mapping[str, str] | None = None) -> OtelTracing | None:
    """The process's tracing, or None when off; ConfigError when on without the ``otel`` extra."""
    environ = os.environ if environ is None else environ
    chosen = exporters(config, environ)
    if not chosen:
        return None
    try:
        from gateway.otel import OtelTracing
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise ConfigError(
            "tracing is on (gateway.tracing or OTEL_TRACES_EXPORTER) but OpenTelemetry is not installed: "
            "pip install 'message-gateway[otel]'"
        ) from None
    return OtelTracing.from_environment(chosen, environ)
