"""The producer's compression level (``[kafka] compression_level``, gateway/bus/compression.py):
config validation, the encoder installed into aiokafka's batch builders, and records produced at
gzip levels 1 and 9 read back from the broker by a plain consumer."""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import types
from collections.abc import Iterator
from typing import Any

import aiokafka.codec
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from structlog.testing import capture_logs

from gateway.bus import compression
from gateway.bus.producer import OutgoingRecord, Publisher
from gateway.bus.topics import ensure_topics
from gateway.config import ConfigError, KafkaSection, config_from_dict
from tests.conftest import make_config, read_records

NO_ENV: dict[str, str] = {}
CODEC_IDS = {"gzip": 1, "lz4": 3, "zstd": 4}  # the record batch's compression attribute

# JSON like the gateway's records: repetitive enough that a higher level finds more to share.
PAYLOAD = b"".join(
    json.dumps(
        {"schema": "gateway.message/v1", "id": f"m-{i:06d}", "conversation_id": f"c-{i % 7}", "text": f"order {i} " * 9}
    ).encode()
    for i in range(300)
)


@pytest.fixture(autouse=True)
def default_levels() -> Iterator[None]:
    """The level is process-wide: put every codec back to its default after each test."""
    yield
    for codec in compression.TARGETS:
        if compression.current_level(codec) is not None:
            compression.use_compression_level(KafkaSection(compression_type=codec))  # type: ignore[arg-type]


def config_error(kafka: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"kafka": kafka}, NO_ENV)
    return str(info.value)


# --- configuration ----------------------------------------------------------------------------------


def test_the_level_is_unset_by_default() -> None:
    assert config_from_dict({}, NO_ENV).kafka.compression_level is None


@pytest.mark.parametrize(
    ("codec", "level"), [("gzip", 1), ("gzip", 9), ("lz4", 1), ("lz4", 17), ("zstd", -5), ("zstd", 22)]
)
def test_levels_in_the_codecs_range_are_accepted(codec: str, level: int) -> None:
    kafka = config_from_dict({"kafka": {"compression_type": codec, "compression_level": level}}, NO_ENV).kafka
    assert (kafka.compression_type, kafka.compression_level) == (codec, level)


@pytest.mark.parametrize(
    ("codec", "level", "limits"),
    [
        ("gzip", 0, "1 to 9"),
        ("gzip", 10, "1 to 9"),
        ("lz4", 0, "1 to 17"),
        ("lz4", 18, "1 to 17"),
        ("zstd", 23, "-131072 to 22"),
    ],
)
def test_a_level_out_of_the_codecs_range_is_refused(codec: str, level: int, limits: str) -> None:
    error = config_error({"compression_type": codec, "compression_level": level})
    assert error == f"kafka.compression_level: {level} is out of range for {codec}: use {limits}"


@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_a_level_for_a_codec_without_levels_is_refused(codec: str) -> None:
    error = config_error({"compression_type": codec, "compression_level": 3})
    assert error.startswith(f"kafka.compression_level: compression_type '{codec}' takes no level; ")
    assert "levels apply to gzip (1 to 9), lz4 (1 to 17), zstd (-131072 to 22) only" in error


def test_the_level_is_gzips_by_default_so_it_is_refused_for_snappy_only_when_set() -> None:
    assert config_from_dict({"kafka": {"compression_type": "snappy"}}, NO_ENV).kafka.compression_level is None
    assert config_error({"compression_level": 12}).startswith("kafka.compression_level: 12 is out of range for gzip")


def test_a_level_that_is_not_an_integer_names_the_key() -> None:
    assert config_error({"compression_level": "fast"}).startswith("kafka.compression_level: ")


def test_a_section_built_in_code_with_a_bad_level_is_refused_before_producing() -> None:
    with pytest.raises(ValueError, match=r"^kafka\.compression_level: compression_type 'snappy' takes no level"):
        compression.use_compression_level(KafkaSection(compression_type="snappy", compression_level=1))


# --- the encoder in aiokafka ------------------------------------------------------------------------


def builder_modules() -> list[types.ModuleType]:
    """aiokafka's batch builder modules present here (the Cython ones need its extensions)."""
    modules = []
    for name in compression.TARGETS["gzip"]:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def test_the_default_is_gzip_level_6_in_every_batch_builder() -> None:
    assert compression.use_compression_level(KafkaSection()) == 6
    assert compression.current_level("gzip") == 6
    modules = builder_modules()
    assert "aiokafka.record.default_records" in compression.installed("gzip")
    assert sorted(compression.installed("gzip")) == sorted(m.__name__ for m in modules)
    for module in modules:
        assert module.gzip_encode is compression.gzip_encode
    assert aiokafka.codec.gzip_encode is not compression.gzip_encode  # decoding and aiokafka.codec: untouched


def test_codecs_without_levels_install_nothing() -> None:
    assert compression.use_compression_level(KafkaSection(compression_type="snappy")) is None
    assert compression.use_compression_level(KafkaSection(compression_type="none")) is None
    assert compression.current_level("snappy") is None


def encode_through_aiokafka(level: int) -> bytes:
    """What the batch builder aiokafka uses calls: its module's ``gzip_encode(data)``, no level."""
    compression.use_compression_level(KafkaSection(compression_type="gzip", compression_level=level))
    module = sys.modules[DefaultRecordBatchBuilder.__module__]
    return bytes(module.gzip_encode(PAYLOAD))


def test_the_level_reaches_the_encoder_aiokafka_calls() -> None:
    fast, small = encode_through_aiokafka(1), encode_through_aiokafka(9)
    assert len(fast) > len(small)
    for encoded in (fast, small):
        assert gzip.decompress(encoded) == PAYLOAD  # standard gzip
        assert aiokafka.codec.gzip_decode(encoded) == PAYLOAD  # what aiokafka's consumer runs


def build_batch(codec: str, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODEC_IDS[codec],
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 24,
    )
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=None, key=b"k", value=value, headers=[("schema", b"gateway.message/v1")])
    return bytes(builder.build())


@pytest.mark.parametrize(("codec", "low", "high"), [("gzip", 1, 9), ("lz4", 1, 12), ("zstd", 1, 19)])
def test_batches_are_smaller_at_the_higher_level_and_read_back_intact(codec: str, low: int, high: int) -> None:
    if codec != "gzip":
        pytest.importorskip("cramjam")
    values = [PAYLOAD[i : i + 900] for i in range(0, len(PAYLOAD), 900)]
    sizes = []
    for level in (low, high):
        compression.use_compression_level(KafkaSection(compression_type=codec, compression_level=level))  # type: ignore[arg-type]
        batch = build_batch(codec, values)
        sizes.append(len(batch))
        read = DefaultRecordBatch(batch)
        assert read.compression_type == CODEC_IDS[codec]
        assert [record.value for record in read] == values
    assert sizes[0] > sizes[1]


def test_a_changed_level_is_logged_as_process_wide() -> None:
    compression.use_compression_level(KafkaSection(compression_level=2))
    with capture_logs() as logs:
        compression.use_compression_level(KafkaSection(compression_level=2))
        compression.use_compression_level(KafkaSection(compression_level=8))
    assert [(e["event"], e["previous"], e["current"]) for e in logs] == [("compression_level_changed", 2, 8)]


# --- aiokafka changed --------------------------------------------------------------------------------


@pytest.fixture
def fresh_install_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process that never installed the encoder."""
    monkeypatch.setattr(compression, "_attempted", set())
    monkeypatch.setattr(compression, "_installed", {})
    monkeypatch.setattr(compression, "_levels", {})


@pytest.mark.usefixtures("fresh_install_state")
def test_a_builder_module_that_changed_keeps_aiokafkas_default_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def their_encoder(payload: bytes) -> bytes:
        return b"theirs"

    renamed = types.ModuleType("fake_records_renamed")  # no gzip_encode any more
    replaced = types.ModuleType("fake_records_replaced")
    replaced.gzip_encode = their_encoder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, renamed.__name__, renamed)
    monkeypatch.setitem(sys.modules, replaced.__name__, replaced)
    targets = (renamed.__name__, replaced.__name__, "aiokafka.record.no_such_module")
    monkeypatch.setitem(compression.TARGETS, "gzip", targets)
    with capture_logs() as logs:
        assert compression.use_compression_level(KafkaSection(compression_level=1)) == 1
        compression.use_compression_level(KafkaSection(compression_level=1))  # a reconnecting producer
    assert [e["event"] for e in logs] == ["compression_level_not_applied"]
    assert logs[0]["modules"] == [
        "fake_records_renamed.gzip_encode",
        "fake_records_replaced.gzip_encode",
        "aiokafka.record.no_such_module",
    ]
    assert not hasattr(renamed, "gzip_encode")
    assert replaced.gzip_encode is their_encoder
    assert compression.installed("gzip") == []


@pytest.mark.usefixtures("fresh_install_state")
def test_an_aiokafka_without_the_codec_function_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiokafka.codec, "zstd_encode")
    with capture_logs() as logs:
        compression.use_compression_level(KafkaSection(compression_type="zstd", compression_level=5))
    assert [(e["event"], e["codec"]) for e in logs] == [("compression_level_not_applied", "zstd")]
    assert compression.installed("zstd") == []


@pytest.mark.usefixtures("fresh_install_state")
def test_an_aiokafka_encoder_without_a_level_parameter_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def lz4_encode(payload: bytes) -> bytes:
        return payload

    monkeypatch.setattr(aiokafka.codec, "lz4_encode", lz4_encode)
    with capture_logs() as logs:
        compression.use_compression_level(KafkaSection(compression_type="lz4", compression_level=5))
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("compression_level_not_applied", "aiokafka.codec.lz4_encode no longer takes (payload, level)")
    ]
    assert compression.installed("lz4") == []


# --- on the broker ------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 9])
async def test_records_produced_at_a_gzip_level_read_back_intact(
    kafka_bootstrap: str, redis_url: str, level: int
) -> None:
    config = make_config(kafka_bootstrap, redis_url, kafka={"compression_type": "gzip", "compression_level": level})
    topic = f"{config.gateway.topic_prefix}compressed"
    await ensure_topics(config.kafka, [topic])
    values = [PAYLOAD[i : i + 900] for i in range(0, len(PAYLOAD), 900)]
    records = [
        OutgoingRecord(topic=topic, value=value, key=b"one-partition", headers=[("n", b"%d" % i)])
        for i, value in enumerate(values)
    ]
    publisher = Publisher(config.kafka)
    await publisher.start()
    try:
        assert compression.current_level("gzip") == level
        await publisher.send_many(records)
    finally:
        await publisher.stop()
    consumed = await read_records(kafka_bootstrap, topic, len(values))  # a plain AIOKafkaConsumer
    assert [r.value for r in consumed] == values
    assert [r.key for r in consumed] == [b"one-partition"] * len(values)
    assert [dict(r.headers)["n"] for r in consumed] == [b"%d" % i for i in range(len(values))]
