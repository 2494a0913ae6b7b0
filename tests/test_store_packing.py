"""gateway/store/packing.py: the store's connections pack commands with hiredis, byte for byte
what redis-py's own (Python) packer sends."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from gateway.config import RedisSection
from gateway.store.packing import HiredisPacking, with_hiredis_packing
from gateway.store.redis import RedisStore

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", 1),
    ("SET", b"k", 0.1),
    ("SET", "k", 1e20),
    ("SET", "k", -5),
    ("SET", "k", 2**70),
    ("SET", "clé", "é 退款 😀"),
    ("CONFIG GET", "maxmemory"),  # a command name of two words
    (b"SCRIPT LOAD", "return 1"),
    ("SET", "big", "x" * 70_000),  # past redis-py's buffer cut-off, where it sends pieces
    ("SET", "view", memoryview(b"abc"), bytearray(b"def")),
    ("EVALSHA", "a" * 40, 3, *[f"gw:autoreply:{i}".encode() for i in range(3)], *range(500)),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0])[:12])
def test_same_bytes_as_redis_py(command: tuple[Any, ...]) -> None:
    python, hiredis = Connection(), with_hiredis_packing(Connection)()
    assert b"".join(hiredis.pack_command(*command)) == b"".join(python.pack_command(*command))


def test_pipelines_pack_the_same() -> None:
    python, hiredis = Connection(), with_hiredis_packing(Connection)()
    assert b"".join(hiredis.pack_commands(COMMANDS)) == b"".join(python.pack_commands(COMMANDS))


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_what_redis_py_refuses_is_refused_alike(value: Any) -> None:
    with pytest.raises(DataError, match=f"Invalid input of type: '{type(value).__name__}'"):
        Connection().pack_command("SET", "k", value)
    with pytest.raises(DataError, match=f"Invalid input of type: '{type(value).__name__}'"):
        with_hiredis_packing(Connection)().pack_command("SET", "k", value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
async def test_the_store_packs_with_hiredis_on_every_transport(url: str, kind: type[Any]) -> None:
    store = RedisStore(RedisSection(url=url))
    try:
        connection_class = store.client.connection_pool.connection_class
        assert issubclass(connection_class, HiredisPacking) and issubclass(connection_class, kind)
        assert with_hiredis_packing(connection_class) is connection_class  # made once per class
    finally:
        await store.close()


async def test_commands_scripts_and_pipelines_work_on_redis(store: RedisStore) -> None:
    key = store.key("packing", "test")
    pipe = store.client.pipeline(transaction=False)
    pipe.set(key, "é 退款")
    pipe.get(key)
    pipe.eval("return {KEYS[1], ARGV[1], ARGV[2]}", 1, key, 42, "x" * 70_000)
    _, value, echoed = await pipe.execute()
    assert value.decode() == "é 退款"
    assert echoed == [key.encode(), b"42", b"x" * 70_000]
