"""Decoding untrusted JSON so that every failure is a PayloadError (quarantine), never a crash.

``msgspec.json.decode`` and ``json.loads`` raise ``RecursionError`` on deeply nested input (a few
thousand ``[``), which is not a ``DecodeError``: a parser catching only the latter lets a 10 KiB
body escape as a 500. Adapters decode provider payloads through ``decode_json`` instead.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from gateway.channel import PayloadError

T = TypeVar("T")

TOO_DEEP = "nested too deeply to decode"


@overload
def decode_json(data: bytes | str | msgspec.Raw, *, what: str = ...) -> Any: ...


@overload
def decode_json(data: bytes | str | msgspec.Raw, into: type[T], *, what: str = ...) -> T: ...


@overload
def decode_json(data: bytes | str | msgspec.Raw, into: msgspec.json.Decoder[T], *, what: str = ...) -> T: ...


def decode_json(
    data: bytes | str | msgspec.Raw, into: type[Any] | msgspec.json.Decoder[Any] | None = None, *, what: str = "payload"
) -> Any:
    """Decode ``data`` (as ``into``: a type or a prepared decoder), raising only PayloadError.

    Messages: ``body is not valid JSON: ...`` (syntax), ``body is not valid UTF-8: ...``,
    ``invalid <what>: ...`` (shape), ``<what> nested too deeply to decode`` (depth).
    """
    try:
        if isinstance(into, msgspec.json.Decoder):
            return into.decode(data)
        if into is None:
            return msgspec.json.decode(data)
        return msgspec.json.decode(data, type=into)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # invalid UTF-8 inside a string: msgspec raises this, not DecodeError
        raise PayloadError(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise PayloadError(f"{what} {TOO_DEEP}") from None
