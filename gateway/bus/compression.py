"""The producer's compression level (``[kafka] compression_level``): a patch of aiokafka, process-wide.

Why a patch: aiokafka 0.14 has no compression level option. Its batch builders call the codec
functions with the payload alone, and ``aiokafka.codec.gzip_encode`` then compresses at level 9:
about twice the CPU of level 6 for batches under 1% smaller (BENCHMARKS.md, "Producer compression
level"). Java clients (KIP-390, Kafka 3.8) default gzip to zlib's level 6 and let
``compression.gzip.level`` change it; this module gives the gateway the same, with the Java
ranges and defaults (``COMPRESSION_LEVELS`` in gateway/config.py): gzip 1-9 (default 6), lz4 1-17
(default 9; the lz4 frame format compresses levels above 12 as 12), zstd -131072 to 22 (default
3); snappy has no level. The level is per codec.

What it replaces: the name ``<codec>_encode`` (``gzip_encode``, ``lz4_encode``, ``zstd_encode``)
in the modules that build record batches, ``aiokafka.record.default_records`` and its Cython
twin ``aiokafka.record._crecords.default_records`` (the one aiokafka uses when its extensions are
built), and the legacy (v0/v1 message format) builders ``aiokafka.record.legacy_records`` and
``aiokafka.record._crecords.legacy_records`` (gzip and lz4: that format has no zstd). Those
modules import the function by name and look the name up in their globals on every batch, so
replacing it there takes effect for every batch built afterwards. ``aiokafka.codec`` itself is
left alone, and so is decompression. The gzip encoder is zlib's one-shot gzip container
(``zlib.compress(data, level, wbits=31)``: standard gzip, read by aiokafka's and Java's decoders;
it is what ``gzip.compress(data, level, mtime=0)`` runs on Python 3.11, without the extra call,
and ~5 µs per batch cheaper than aiokafka's ``GzipFile`` on a BytesIO, which counts for
single-record batches). lz4 and zstd keep aiokafka's encoders (and their framing), given the level.

Process-wide: the level lives in these modules, not in a producer, so every aiokafka producer of
the process uses it, including ones the gateway did not create. The gateway's processes have one
``[kafka]`` section, which is what users expect to apply; ``Publisher.start()`` calls
``use_compression_level`` before its producer starts. Should a process start producers with two
different levels (tests do), the last one started sets the level for all, and a warning says so.

Guarded against aiokafka changing: where a module or its ``<codec>_encode`` is missing or is no
longer aiokafka.codec's function, or aiokafka's lz4/zstd encoder no longer takes a level, a
warning is logged (once per codec and process) and aiokafka's default level stays in force there;
producing never fails because of this module.
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from collections.abc import Callable
from typing import Any

import structlog

from gateway.config import COMPRESSION_LEVELS, KafkaSection, compression_level_problem

log = structlog.get_logger(__name__)

Encoder = Callable[..., bytes]

_DEFAULT = "aiokafka.record.default_records"
_DEFAULT_C = "aiokafka.record._crecords.default_records"
_LEGACY = "aiokafka.record.legacy_records"
_LEGACY_C = "aiokafka.record._crecords.legacy_records"
# The modules whose global <codec>_encode builds batches; the Cython ones may be missing (aiokafka
# installed without its extensions), and then their Python twins are the ones in use.
TARGETS: dict[str, tuple[str, ...]] = {
    "gzip": (_DEFAULT, _DEFAULT_C, _LEGACY, _LEGACY_C),
    "lz4": (_DEFAULT, _DEFAULT_C, _LEGACY, _LEGACY_C),
    "zstd": (_DEFAULT, _DEFAULT_C),
}
_OPTIONAL = frozenset({_DEFAULT_C, _LEGACY_C})

_levels: dict[str, int] = {}  # codec -> the level every producer of this process uses
_attempted: set[str] = set()  # codecs whose encoder was installed (or could not be: warned once)
_installed: dict[str, list[str]] = {}  # codec -> the modules now using the gateway's encoder


def level_of(kafka: KafkaSection) -> int | None:
    """The level ``kafka`` asks for (its codec's default when unset); None for codecs without
    levels. Raises ValueError for a level the codec does not take (config_from_dict refuses those
    already; this catches a KafkaSection built in code)."""
    if problem := compression_level_problem(kafka.compression_type, kafka.compression_level):
        raise ValueError(f"kafka.compression_level: {problem}")
    limits = COMPRESSION_LEVELS.get(kafka.compression_type)
    if limits is None:
        return None
    return limits[2] if kafka.compression_level is None else kafka.compression_level


def use_compression_level(kafka: KafkaSection) -> int | None:
    """Make every producer of this process compress ``kafka.compression_type`` at ``kafka``'s level
    (installing the encoder the first time); returns that level (None for none and snappy)."""
    level = level_of(kafka)
    if level is None:
        return None
    codec = kafka.compression_type
    previous = _levels.get(codec)
    if previous is not None and previous != level:
        log.warning("compression_level_changed", codec=codec, previous=previous, current=level, scope="process")
    _levels[codec] = level
    if codec not in _attempted:
        _attempted.add(codec)
        _install(codec)
    return level


def current_level(codec: str) -> int | None:
    """The level the gateway's encoder uses for ``codec`` (None: never set); ``installed`` tells
    where aiokafka uses that encoder."""
    return _levels.get(codec)


def installed(codec: str) -> list[str]:
    """The aiokafka modules that use the gateway's encoder for ``codec`` (for tests and diagnostics)."""
    return list(_installed.get(codec, ()))


def gzip_encode(payload: Any, compresslevel: int | None = None) -> bytes:
    """aiokafka's ``gzip_encode`` signature; the process's level unless one is passed."""
    return zlib.compress(payload, compresslevel or _levels.get("gzip", COMPRESSION_LEVELS["gzip"][2]), 31)


def _with_level(codec: str, original: Encoder) -> Encoder:
    """aiokafka's own lz4/zstd encoder (its framing, its cramjam calls), given the process's level."""

    def encode(payload: Any, level: int | None = None) -> bytes:
        return original(payload, level if level is not None else _levels[codec])

    encode.__name__ = encode.__qualname__ = f"{codec}_encode"
    return encode


def _signature_problem(codec: str, original: Encoder) -> str | None:
    """lz4 and zstd call aiokafka's encoder as ``(payload, level)``: refuse one that no longer takes it."""
    if codec == "gzip":
        return None  # ours does not call aiokafka's
    try:
        inspect.signature(original).bind(b"", 1)
    except (TypeError, ValueError):
        return f"aiokafka.codec.{codec}_encode no longer takes (payload, level)"
    return None


def _install(codec: str) -> None:
    name = f"{codec}_encode"
    original: Encoder | None = getattr(importlib.import_module("aiokafka.codec"), name, None)
    problem = f"aiokafka.codec has no {name}" if original is None else _signature_problem(codec, original)
    if problem or original is None:
        _installed[codec] = []
        log.warning("compression_level_not_applied", codec=codec, reason=problem)
        return
    encoder = gzip_encode if codec == "gzip" else _with_level(codec, original)
    done: list[str] = []
    missing: list[str] = []
    for module_name in TARGETS[codec]:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if module_name not in _OPTIONAL:
                missing.append(module_name)
            continue
        if getattr(module, name, None) is original:
            setattr(module, name, encoder)
            done.append(module_name)
        else:  # gone, or no longer aiokafka.codec's function: leave it as it is
            missing.append(f"{module_name}.{name}")
    _installed[codec] = done
    if missing:
        log.warning(
            "compression_level_not_applied",
            codec=codec,
            reason="aiokafka changed: these keep aiokafka's default level",
            modules=missing,
        )
