"""Commands packed by hiredis (C) on redis-py's asyncio connections.

Why: redis-py's synchronous connections pack commands with hiredis when it is installed
(``HiredisRespSerializer``); its asyncio connections (redis 8.1) always pack in Python, two
allocations and a join per argument. The worker's script calls carry hundreds of arguments per
fetch (the auto-reply decisions, the conversation clocks): packing one auto-reply call for 64
messages took ~300 µs in Python and ~75 µs with ``hiredis.pack_command``, the same bytes (a test
compares them). hiredis is a pinned dependency already (its reply parser is redis-py's default).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError


class HiredisPacking:
    """Mixin for a redis-py asyncio connection class: :meth:`pack_command` through hiredis, as
    redis-py's own synchronous ``HiredisRespSerializer.pack`` does it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # The command name may hold several words ("CONFIG GET"): the server wants them apart.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # bytearray/memoryview (rare): as bytes; anything else is redis-py's own DataError.
            converted = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
            bad = [a for a in converted if not isinstance(a, (str, bytes, int, float)) or isinstance(a, bool)]
            if bad:
                raise DataError(
                    f"Invalid input of type: '{type(bad[0]).__name__}'. Convert to a bytes, string, int or float first."
                ) from None
            return [hiredis.pack_command(converted)]  # type: ignore[arg-type]


_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def with_hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` (plain TCP, TLS or Unix socket, as the URL chose) packing with hiredis;
    one subclass per class, made once."""
    if issubclass(connection_class, HiredisPacking):
        return connection_class
    found = _CLASSES.get(connection_class)
    if found is None:
        found = _CLASSES[connection_class] = type(
            f"Hiredis{connection_class.__name__}", (HiredisPacking, connection_class), {}
        )
    return found
