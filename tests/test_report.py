"""`gateway report`: the aggregation rules, and the command on the real broker against docs/report.md.

The worked example of docs/report.md is the integration test's data: its events table is parsed,
published to a test-unique topic, and the command's output must be the page's output blocks.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from gateway.bus.producer import Publisher, record_for
from gateway.bus.topics import Topics, ensure_topics
from gateway.cli import cli
from gateway.config import Config
from gateway.conversations.reader import Undecodable, start_offsets
from gateway.conversations.report import Report, build_report, csv_rows, human_duration, percentile, render_table
from gateway.model import ConversationEvent, encode
from gateway.testing.records import produce_raw
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "report.md"
GATEWAY = str(Path(sys.executable).with_name("gateway"))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DAY = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))


# The worked example of docs/report.md


def doc_events() -> list[ConversationEvent]:
    """The rows of the page's events table, in order (a repeated id is a redelivered event)."""
    text = DOC.read_text("utf-8")
    table = text[text.index("<!-- events -->") :].split("\n\n", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    events = []
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        other = cells.pop("other fields")
        fields: dict[str, Any] = {
            "id": cells.pop("id"),
            "conversation_id": cells.pop("conversation"),
            "occurred_at": datetime.fromisoformat(cells.pop("occurred_at")).replace(tzinfo=UTC),
        }
        fields.update({key: value for key, value in cells.items() if value})
        fields.update(pair.partition("=")[::2] for pair in shlex.split(other))
        events.append(msgspec.convert(fields, ConversationEvent, strict=False))
    return events


def doc_block(marker: str) -> str:
    """The fenced block following ``<!-- marker -->`` on the page."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)^```$", DOC.read_text("utf-8"), re.S | re.M)
    assert match, f"docs/report.md has no block after <!-- {marker} -->"
    return match.group(1)


def doc_command(marker: str) -> list[str]:
    """The documented command's arguments after ``gateway``."""
    words = shlex.split(doc_block(f"command: {marker}"))
    assert words[0] == "gateway"
    return words[1:]


async def publish(config: Config, events: list[ConversationEvent]) -> None:
    """Publish as the worker does: keyed by conversation, with the contract headers."""
    topic = Topics(config.gateway.topic_prefix).conversations
    await ensure_topics(config.kafka, [topic])
    publisher = Publisher(config.kafka)
    await publisher.start()
    try:
        await publisher.send_many(
            [record_for(topic, event, traceparent=TRACEPARENT, key=event.conversation_id) for event in events]
        )
    finally:
        await publisher.stop()


def write_config(path: Path, config: Config) -> Path:
    path.write_text(
        f'[gateway]\ntopic_prefix = "{config.gateway.topic_prefix}"\n'
        f'[kafka]\nbootstrap_servers = "{config.kafka.bootstrap_servers}"\n'
    )
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    """`gateway ...` in this process (click's runner): exit code, stdout, stderr. Logging is left
    as it is: configuring it is process-wide, and structlog would cache every logger first used
    afterwards, so later tests of this process could no longer capture their logs."""
    with mock.patch("gateway.cli.configure_logging"):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def published_day(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Path:
    """The page's events on a test-unique topic prefix; the config file that names it."""
    config = make_config(kafka_bootstrap, redis_url)
    asyncio.run(publish(config, doc_events()))
    return write_config(tmp_path / "gateway.toml", config)


def test_the_documented_day_as_a_table_json_and_csv(published_day: Path) -> None:
    # The table, as a user runs it: the installed command in a process of its own.
    args = doc_command("table")
    result = subprocess.run(
        [GATEWAY, *args, "--config", str(published_day)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == doc_block("output: table")
    assert "whatsapp  meta          2         1         3" in result.stdout
    assert "breach rate      40.0% (2 breached of 5 opened/reopened cycles)" in result.stdout

    code, out, err = invoke(*doc_command("json"), "--config", str(published_day))
    assert code == 0, err
    report = json.loads(out)
    assert report == json.loads(doc_block("output: json"))
    assert report["events"] == {
        "read": 33,
        "undecodable": 0,
        "counted": 29,
        "duplicates": 2,
        "superseded": 1,
        "by_type": {
            "opened": 4,
            "reopened": 1,
            "first_response": 5,
            "reply": 3,
            "sla_breached": 3,
            "resolved": 5,
            "csat_requested": 4,
            "csat_received": 3,
            "profile_linked": 1,
            "profile_merged": 0,
        },
    }
    assert report["volumes"]["instances"] == [
        {"instance": "web", "channel": "webchat", "opened": 2, "reopened": 0, "resolved": 2},
        {"instance": "whatsapp", "channel": "meta", "opened": 2, "reopened": 1, "resolved": 3},
    ]
    billing, tech = report["response_times"]["queues"]
    assert billing["queue"] == "billing" and tech["queue"] == "tech"
    assert billing["first_response"] == {
        "count": 3,
        "p50_s": 600.0,
        "p90_s": 2520.0,
        "business_count": 3,
        "business_p50_s": 300.0,
        "business_p90_s": 2520.0,
    }
    assert (tech["first_response"]["p50_s"], tech["first_response"]["p90_s"]) == (60.0, 2400.0)
    assert tech["first_response"]["business_count"] == 0 and tech["first_response"]["business_p50_s"] is None
    assert (tech["reply"]["p50_s"], tech["reply"]["p90_s"]) == (30.0, 90.0)
    assert (billing["resolution"]["business_p50_s"], tech["resolution"]["p50_s"]) == (2400.0, 1500.0)
    everything = report["response_times"]["all"]
    assert (everything["first_response"]["p50_s"], everything["first_response"]["p90_s"]) == (600.0, 2520.0)
    assert (everything["resolution"]["count"], everything["resolution"]["p50_s"]) == (5, 1800.0)
    assert report["sla"] == {"breach_events": 3, "breached_cycles": 2, "cycles": 5, "breach_rate": 0.4}
    assert report["csat"] == {
        "sent": 3,
        "not_sent": 1,
        "not_sent_by_reason": {"outside_window": 1},
        "responses": 2,
        "response_rate": 0.6667,
        "rated": 2,
        "average_rating": 4.5,
        "ratings": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1},
    }
    assert report["sentiment"] == {"cycles": 5, "positive": 1, "neutral": 1, "negative": 2, "unknown": 1}

    code, out, err = invoke(*doc_command("json")[:-2], "--format", "csv", "--config", str(published_day))
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["section", "key", "metric", "value"]
    assert all(len(row) == 4 for row in rows)
    assert out.splitlines()[:3] == [
        "section,key,metric,value",
        "period,,since,2026-12-01T00:00:00Z",
        "period,,until,2026-12-02T00:00:00Z",
    ]
    excerpt = doc_block("output: csv excerpt").splitlines()
    assert excerpt[0] == "section,key,metric,value"
    start = out.splitlines().index(excerpt[1])
    assert out.splitlines()[start : start + len(excerpt) - 1] == excerpt[1:]
    for line in (
        "sla,,breach_rate,0.4",
        "csat,,response_rate,0.6667",
        "csat_ratings,4,count,1",
        "volumes,(all),resolved,5",
    ):
        assert line in out.splitlines()


def test_filters_by_queue_and_instance_on_the_broker(published_day: Path) -> None:
    code, out, err = invoke(
        "report",
        "--config",
        str(published_day),
        "--since",
        "2026-12-01",
        "--until",
        "2026-12-02",
        "--format",
        "json",
        "--queue",
        "billing",
    )
    assert code == 0, err
    billing = json.loads(out)
    assert billing["filters"] == {"instances": [], "queues": ["billing"]}
    assert billing["volumes"]["total"] == {"opened": 2, "reopened": 1, "resolved": 3}
    assert [q["queue"] for q in billing["response_times"]["queues"]] == ["billing"]
    assert billing["sla"]["breach_rate"] == round(1 / 3, 4)
    # The CSAT events carry no queue: they count in their conversation's queue.
    assert billing["csat"]["sent"] == 2 and billing["csat"]["not_sent"] == 1
    assert billing["csat"]["responses"] == 1 and billing["csat"]["ratings"]["4"] == 1

    code, out, err = invoke(
        "report",
        "--config",
        str(published_day),
        "--since",
        "2026-12-01T12:00:00Z",
        "--until",
        "2026-12-01T13:00:00Z",
        "--format",
        "table",
        "--instance",
        "web",
    )
    assert code == 0, err
    assert "web       webchat       1         0         1" in out
    assert "whatsapp" not in out
    assert "  responses        1 (100.0% of sent)" in out


def test_an_empty_period_says_so_and_exits_0(published_day: Path) -> None:
    code, out, _ = invoke("report", "--config", str(published_day), "--since", "2026-11-01", "--until", "2026-11-02")
    assert code == 0
    assert out == "no conversation events between 2026-11-01T00:00:00Z and 2026-11-02T00:00:00Z\n"

    code, out, err = invoke(
        "report",
        "--config",
        str(published_day),
        "--since",
        "2026-11-01",
        "--until",
        "2026-11-02",
        "--format",
        "json",
        "--queue",
        "nowhere",
    )
    assert code == 0
    assert "no conversation events between" in err and "(queue nowhere)" in err
    report = json.loads(out)
    assert report["events"]["counted"] == 0 and report["sla"]["breach_rate"] is None
    assert report["response_times"]["all"]["first_response"]["p50_s"] is None


def test_a_missing_topic_and_bad_times_are_errors(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    config_file = write_config(tmp_path / "gateway.toml", make_config(kafka_bootstrap, redis_url))
    code, _, err = invoke("report", "--config", str(config_file))
    assert code == 2
    assert re.search(r"topic t\w+\.conversations\.v1 does not exist", err)

    code, _, err = invoke("report", "--config", str(config_file), "--since", "yesterday")
    assert code == 2 and "--since" in err and "neither a time" in err
    code, _, err = invoke("report", "--config", str(config_file), "--since", "2026-12-02", "--until", "2026-12-01")
    assert code == 2 and "is not before --until" in err


def test_undecodable_records_are_skipped_and_counted(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    config = make_config(kafka_bootstrap, redis_url)
    event = ConversationEvent(
        id="x1", type="opened", conversation_id="c9", instance="web", channel="webchat", occurred_at=DAY[0], cycle=1
    )
    asyncio.run(publish(config, [event]))
    topic = Topics(config.gateway.topic_prefix).conversations
    asyncio.run(produce_raw(kafka_bootstrap, topic, [(b"c9", b"not json"), (b"c9", b'{"type": "opened"}')]))
    config_file = write_config(tmp_path / "gateway.toml", config)
    code, out, err = invoke(
        "report", "--config", str(config_file), "--since", "2026-12-01", "--until", "2026-12-02", "--format", "json"
    )
    assert code == 0
    assert "warning: 2 undecodable record(s) skipped" in err
    assert json.loads(out)["events"] | {"by_type": None} == {
        "read": 3,
        "undecodable": 2,
        "counted": 1,
        "duplicates": 0,
        "superseded": 0,
        "by_type": None,
    }


# The aggregation rules, on events built here


def event(kind: str, conversation: str, at: str, **fields: Any) -> ConversationEvent:
    fields.setdefault("instance", "web")
    fields.setdefault("channel", "webchat")
    fields.setdefault("id", f"{conversation}-{kind}-{at}")
    return ConversationEvent(
        type=kind,  # type: ignore[arg-type]  # the tests name valid types
        conversation_id=conversation,
        occurred_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
        **fields,
    )


def day_report(events: list[ConversationEvent | Undecodable], **filters: Any) -> Report:
    return build_report(events, since=DAY[0], until=DAY[1], **filters)


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 50) == percentile([7.0], 90) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0], 90) == 3.0
    ten = [float(n) for n in range(10, 0, -1)]
    assert (percentile(ten, 50), percentile(ten, 90), percentile(ten, 100)) == (5.0, 9.0, 10.0)
    assert (percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 90)) == (2.0, 4.0)


def test_the_same_event_id_counts_once() -> None:
    first = event("first_response", "c1", "2026-12-01T10:00", queue="q", value_s=100.0, cycle=1)
    second = event("first_response", "c2", "2026-12-01T11:00", queue="q", value_s=300.0, cycle=1)
    report = day_report([first, first, second, first])
    assert (report.events.counted, report.events.duplicates) == (2, 2)
    assert report.response_times.all.first_response.count == 2
    assert report.response_times.all.first_response.p90_s == 300.0


def test_the_latest_csat_answer_of_a_survey_supersedes_the_earlier() -> None:
    asked = event("csat_requested", "c1", "2026-12-01T10:00", survey_id="s1", sent=True)
    late = event("csat_received", "c1", "2026-12-01T10:09", survey_id="s1", rating=4, comment="all good now")
    early = event("csat_received", "c1", "2026-12-01T10:05", survey_id="s1", rating=1)
    other = event("csat_received", "c2", "2026-12-01T11:00", survey_id="s2", rating=5)
    report = day_report([asked, late, early, other])  # the later answer read first: time decides
    csat = report.csat
    assert (csat.sent, csat.responses, csat.rated, report.events.superseded) == (1, 2, 2, 1)
    assert csat.ratings == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1}
    assert csat.average_rating == 4.5
    assert csat.response_rate == 2.0  # counted in the period: s2 was sent another day


def test_surveys_not_sent_are_counted_by_reason() -> None:
    report = day_report(
        [
            event("csat_requested", "c1", "2026-12-01T10:00", survey_id="s1", sent=False, reason="outside_window"),
            event("csat_requested", "c2", "2026-12-01T10:00", survey_id="s2", sent=False, reason="outside_window"),
            event("csat_requested", "c3", "2026-12-01T10:00", survey_id="s3", sent=False),
            event("csat_requested", "c4", "2026-12-01T10:00", survey_id="s4"),  # sent unless it says false
        ]
    )
    assert report.csat.not_sent_by_reason == {"outside_window": 2, "unknown": 1}
    assert (report.csat.sent, report.csat.not_sent, report.csat.response_rate) == (1, 3, 0.0)


def test_only_events_of_the_period_count() -> None:
    events = [
        event("opened", "c1", "2026-11-30T23:59:59", cycle=1),
        event("opened", "c2", "2026-12-01T00:00:00", cycle=1),  # since is included
        event("opened", "c3", "2026-12-01T23:59:59", cycle=1),
        event("opened", "c4", "2026-12-02T00:00:00", cycle=1),  # until is excluded
    ]
    report = day_report(list(events))
    assert report.volumes.total["opened"] == 2
    assert report.events.read == 4 and report.events.counted == 2


def test_instance_and_queue_filters_with_inherited_queues() -> None:
    events: list[ConversationEvent | Undecodable] = [
        event("opened", "c1", "2026-12-01T09:00", queue="billing", cycle=1, instance="wa", channel="meta"),
        event("csat_requested", "c1", "2026-12-01T09:30", survey_id="s1", instance="wa", channel="meta"),
        event("opened", "c2", "2026-12-01T09:00", queue="tech", cycle=1),
        event("csat_requested", "c2", "2026-12-01T09:30", survey_id="s2"),
        # Moved to billing later: its earlier survey stays with tech, its later one goes to billing.
        event("reopened", "c2", "2026-12-01T12:00", queue="billing", cycle=2),
        event("csat_requested", "c2", "2026-12-01T12:30", survey_id="s3"),
        event("csat_requested", "c3", "2026-12-01T08:00", survey_id="s4"),  # never routed: no queue
        Undecodable(0, 7, "DecodeError"),
    ]
    billing = day_report(events, queues=["billing"])
    assert billing.csat.sent == 2  # s1 and s3
    assert (billing.volumes.total["opened"], billing.volumes.total["reopened"]) == (1, 1)
    assert billing.events.undecodable == 1

    web = day_report(events, instances=["web"])
    assert [v.instance for v in web.volumes.instances] == ["web"]
    assert web.csat.sent == 3
    both = day_report(events, instances=["web"], queues=["tech", "billing"])
    assert both.csat.sent == 2  # s2 (tech) and s3 (billing); s4 has no queue
    unrouted = day_report(events)
    assert unrouted.csat.sent == 4


def test_a_queue_learned_after_the_event_still_applies() -> None:
    survey = event("csat_requested", "c1", "2026-12-01T09:00", survey_id="s1")
    opened = event("opened", "c1", "2026-12-01T10:00", queue="vip", cycle=1)
    assert day_report([survey, opened], queues=["vip"]).csat.sent == 1
    # ... also when the event naming the queue is outside the period.
    before = event("opened", "c2", "2026-11-30T10:00", queue="vip", cycle=1)
    answer = event("csat_received", "c2", "2026-12-01T10:00", survey_id="s2", rating=3)
    assert day_report([before, answer], queues=["vip"]).csat.responses == 1


def test_sla_breach_rate_counts_cycles() -> None:
    events: list[ConversationEvent | Undecodable] = [
        event("opened", "c1", "2026-12-01T09:00", cycle=1),
        event("sla_breached", "c1", "2026-12-01T09:30", cycle=1, due_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        event("sla_breached", "c1", "2026-12-01T11:00", cycle=1, due_at=datetime(2026, 12, 1, 11, tzinfo=UTC)),
        event("resolved", "c1", "2026-12-01T12:00", cycle=1, value_s=10800.0),
        event("reopened", "c1", "2026-12-01T13:00", cycle=2),
        event("opened", "c2", "2026-12-01T09:00", cycle=1),
        event("opened", "c3", "2026-12-01T09:00", cycle=1),
        event("sla_breached", "c3", "2026-12-01T10:00", cycle=1),
    ]
    sla = day_report(events).sla
    assert (sla.breach_events, sla.breached_cycles, sla.cycles, sla.breach_rate) == (3, 2, 4, 0.5)
    assert day_report([]).sla.breach_rate is None


def test_durations_wall_clock_and_business_hours_per_queue() -> None:
    events: list[ConversationEvent | Undecodable] = [
        event(
            "first_response",
            f"c{n}",
            "2026-12-01T10:00",
            queue="billing",
            value_s=float(n * 60),
            value_business_s=float(n * 30) if n % 2 else None,
        )
        for n in range(1, 11)
    ]
    events.append(event("reply", "c99", "2026-12-01T10:00", value_s=42.0))  # never routed to a queue
    times = day_report(events).response_times
    assert [q.queue for q in times.queues] == ["billing", None]
    first = times.queues[0].first_response
    assert (first.count, first.p50_s, first.p90_s) == (10, 300.0, 540.0)
    assert (first.business_count, first.business_p50_s, first.business_p90_s) == (5, 150.0, 270.0)
    assert times.queues[1].reply.p50_s == 42.0 and times.queues[1].first_response.count == 0
    assert ("reply", "(none)", "p50_s", 42.0) in csv_rows(day_report(events))


def test_sentiment_mix_per_cycle() -> None:
    report = day_report(
        [
            event("opened", "c1", "2026-12-01T09:00", cycle=1, sentiment="negative"),
            event("reopened", "c1", "2026-12-01T12:00", cycle=2, sentiment="positive"),
            event("opened", "c2", "2026-12-01T09:00", cycle=1),
            event("resolved", "c2", "2026-12-01T10:00", cycle=1, sentiment="positive"),  # not an opening
        ]
    )
    mix = report.sentiment
    assert (mix.cycles, mix.positive, mix.neutral, mix.negative, mix.unknown) == (3, 1, 0, 1, 1)
    table = render_table(report)
    assert "  negative      1  33.3%" in table and "  unknown       1  33.3%" in table


def test_human_durations() -> None:
    seconds = (None, 0.4, 42, 252, 600, 3600, 7500, 86400 * 3, 86400 * 3 + 3600 * 4 + 59)
    assert [human_duration(s) for s in seconds] == ["-", "0s", "42s", "4m 12s", "10m", "1h", "2h 5m", "3d", "3d 4h"]


def test_reading_starts_where_offsets_for_times_says() -> None:
    a, b, c = (TopicPartition("t", n) for n in range(3))
    ends = {a: 10, b: 5, c: 0}
    assert start_offsets(ends, None) == {a: None, b: None, c: None}  # not supported: from the beginning
    assert start_offsets(ends, {a: 4, b: None, c: None}) == {a: 4, b: 5, c: 0}  # none found: nothing to read
    assert start_offsets(ends, {a: 12, b: -1, c: 0}) == {a: 10, b: 5, c: 0}


def test_the_json_keys_are_documented() -> None:
    report = json.loads(msgspec.json.encode(day_report([])))
    documented = DOC.read_text("utf-8")
    for section, value in report.items():
        assert f"`{section}" in documented, section
        if isinstance(value, dict):
            for key in value:
                assert f"`{key}`" in documented or f"{section}.{key}" in documented, f"{section}.{key}"
    assert encode(day_report([]).period) == b'{"since":"2026-12-01T00:00:00Z","until":"2026-12-02T00:00:00Z"}'
