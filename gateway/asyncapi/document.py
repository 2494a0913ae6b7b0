"""The AsyncAPI 3.0 document of the gateway's topics, built from the models and a configuration.

One source for everything a downstream service needs to know about a topic: its address, the
record it carries (payload schemas generated from ``gateway/model.py``, like ``schemas/*.json``),
its key, its headers, its Kafka bindings (partitions, replicas, consumer groups) and which process
publishes to it or reads it. Routing rules that name their own topics and ``[kafka] extra_topics``
become channels too, so the document printed for a deployment's configuration lists every topic the
gateway writes. ``schemas/asyncapi.yaml`` is this document for the default configuration; a test
keeps it equal (docs/consumers.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from gateway.config import Config
from gateway.model import AUDIT_SCHEMA, CONVERSATION_SCHEMA, DLQ_SCHEMA, EVENT_SCHEMA, MESSAGE_SCHEMA, RECORD_TYPES
from gateway.schema import SCHEMA_FILES, schema_urn

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
# The version of the topic contract (docs/architecture.md, "Contracts"): the major follows the
# topics' and schemas' ``v1``; the minor grows when topics, headers or fields are added.
CONTRACT_VERSION = "1.1.0"
SCHEMA_REF = "#/components/schemas/{name}"

# Component name of each record's message, and what its record key is.
MESSAGES: dict[str, tuple[str, str]] = {
    MESSAGE_SCHEMA: (
        "message",
        "The conversation id (`conversation_id`): a conversation stays in one partition, in order.",
    ),
    EVENT_SCHEMA: ("deliveryEvent", "The conversation id, else the provider's message id (`external_id`)."),
    DLQ_SCHEMA: ("dlqRecord", "The channel instance, else the channel type (absent when neither is known)."),
    CONVERSATION_SCHEMA: ("conversationEvent", "The conversation id."),
    AUDIT_SCHEMA: ("auditRecord", "The console user who acted (`actor`), `-` for an unknown name."),
}
SUMMARIES = {
    MESSAGE_SCHEMA: "A customer message (inbound) or a reply (outbound), normalized across channels.",
    EVENT_SCHEMA: "A status change of an outbound message: accepted, sent, delivered, read or failed.",
    DLQ_SCHEMA: "Whatever could not be normalized, processed or delivered, with its raw payload and the reason.",
    CONVERSATION_SCHEMA: "Something that happened to a conversation: opened, first response, SLA breached, resolved...",
    AUDIT_SCHEMA: "An operator action in the console: sign-in, unmasking, DLQ replay, test message (docs/console.md).",
}

# Who takes part, as operation tags.
ACTORS = {
    "serve": "`gateway serve`: webhooks, the HTTP API, web chat and the SMTP listener.",
    "worker": "`gateway worker`: the processor chain, auto-replies, surveys and the SLA scheduler.",
    "dispatch": "`gateway dispatch`: delivery through the channel instances.",
    "downstream": "Downstream services: helpdesks, CRMs, analytics, bots (docs/consumers.md).",
    "operators": "The operators' tools: `gateway dlq`, `gateway report`, `gateway tail`.",
}


@dataclass(frozen=True, slots=True)
class Flow:
    """One process publishing to (``send``) or reading (``receive``) a topic."""

    actor: str
    action: str  # "send" | "receive"
    summary: str
    group: str | None = None  # the consumer group of a receiving gateway process


@dataclass(frozen=True, slots=True)
class Topic:
    name: str  # the channel's id in the document
    address: str
    schemas: tuple[str, ...]  # the schema ids of its records; empty: the gateway publishes nothing there
    title: str
    description: str
    flows: tuple[Flow, ...]


def topics_of(config: Config) -> list[Topic]:
    """Every topic of a deployment: the six of the contract, routed topics, extra topics."""
    prefix = config.gateway.topic_prefix
    worker_group, dispatch_group = config.worker.group_id, config.dispatch.group_id
    downstream = Flow("downstream", "receive", "Downstream services read the messages after the processors.")
    topics = [
        Topic(
            "inbound",
            f"{prefix}inbound.v1",
            (MESSAGE_SCHEMA,),
            "Inbound messages",
            "Normalized customer messages as the channels received them, before any processor.",
            (
                Flow(
                    "serve",
                    "send",
                    "Webhooks, mail and chat, verified, deduplicated and normalized; resolutions "
                    "from `POST /api/v1/conversations/resolve`.",
                ),
                Flow("dispatch", "send", "The resolution of a conversation after a resolving outbound message."),
                Flow(
                    "operators",
                    "send",
                    "`gateway dlq replay`: raw payloads through their channel again, records of stage `process` as "
                    "they were (same ids).",
                ),
                Flow("worker", "receive", "Runs the processor chain on every message.", worker_group),
            ),
        ),
        Topic(
            "processed",
            f"{prefix}processed.v1",
            (MESSAGE_SCHEMA,),
            "Processed messages",
            "The inbound messages after the processor chain (same `id`): language, sentiment, escalation, "
            "routing. A routing rule may send a message to another topic instead.",
            (Flow("worker", "send", "Every message the processors kept, unless routed elsewhere."), downstream),
        ),
        Topic(
            "outbound",
            f"{prefix}outbound.v1",
            (MESSAGE_SCHEMA,),
            "Outbound messages",
            'Replies to send, `direction = "outbound"`, addressed by `instance` and `conversation_id`.',
            (
                Flow("worker", "send", "Auto-replies and satisfaction surveys."),
                Flow("serve", "send", "`POST /api/v1/messages` (with an `Idempotency-Key`)."),
                Flow(
                    "downstream",
                    "send",
                    "Replies of downstream services (`gateway.client`): the dispatcher sends each message id once.",
                ),
                Flow("operators", "send", "`gateway dlq replay`: quarantined records of stage `dispatch`, same ids."),
                Flow("dispatch", "receive", "Sends each message once through its channel instance.", dispatch_group),
            ),
        ),
        Topic(
            "events",
            f"{prefix}events.v1",
            (EVENT_SCHEMA, AUDIT_SCHEMA),
            "Delivery events",
            "What became of each outbound message, linked by `message_id`; and the console's audit records "
            "(`gateway.audit/v1`): consumers tell them apart by the `schema` header.",
            (
                Flow("dispatch", "send", "`sent` (with the provider's id) or `failed`, once per outbound message."),
                Flow(
                    "serve",
                    "send",
                    "Providers' status webhooks: `delivered`, `read`, `failed`; messages agents "
                    "sent from the provider's own app.",
                ),
                Flow("worker", "send", "Events a processor reports (`ProcessorContext.emit_event`)."),
                Flow("serve", "send", "The console's audit records: who signed in, unmasked, replayed, sent a test."),
                Flow("downstream", "receive", "Downstream services follow their replies."),
            ),
        ),
        Topic(
            "dlq",
            f"{prefix}dlq.v1",
            (DLQ_SCHEMA,),
            "Dead letters",
            "Whatever could not be normalized, processed or delivered, with the raw payload and the reason.",
            (
                Flow(
                    "serve", "send", "Signed but unusable requests, adapter failures (stages `ingress`, `normalize`)."
                ),
                Flow("worker", "send", "Messages a processor kept failing on (stage `process`)."),
                Flow("dispatch", "send", "Messages that could not be sent (stage `dispatch`)."),
                Flow("operators", "receive", "`gateway dlq list`, `show` and `replay` (docs/dlq.md)."),
            ),
        ),
        Topic(
            "conversations",
            f"{prefix}conversations.v1",
            (CONVERSATION_SCHEMA,),
            "Conversation events",
            "Opened, reopened, first response, reply, SLA breached, resolved, surveys and profiles; ids derived "
            "from their cause, so a repeated event has the same id (docs/conversations.md).",
            (
                Flow("worker", "send", "Messages in and out, SLA breaches, surveys and their answers, profile links."),
                Flow("dispatch", "send", "Replies sent: first response and reply clocks, resolutions."),
                Flow("serve", "send", "Agents' messages reported by the channel; `/api/v1/profiles/link`."),
                Flow("downstream", "receive", "Downstream services and dashboards follow conversations."),
                Flow("operators", "receive", "`gateway report` (docs/report.md)."),
            ),
        ),
    ]
    routed = routing_topics(config)
    standard = {topic.address for topic in topics}
    for address in sorted(routed - standard):
        topics.append(
            Topic(
                channel_name(address),
                address,
                (MESSAGE_SCHEMA,),
                f"Routed messages: {address}",
                "Processed messages a routing rule sends here instead of the processed topic "
                "(docs/processors/routing.md).",
                (Flow("worker", "send", "Messages whose routing rule names this topic."), downstream),
            )
        )
    for address in sorted(set(config.kafka.extra_topics) - routed - standard):
        topics.append(
            Topic(
                channel_name(address),
                address,
                (),
                f"Extra topic: {address}",
                "Created at start (`[kafka] extra_topics`); no routing rule names it, so the gateway publishes "
                "nothing here.",
                (),
            )
        )
    return topics


def routing_topics(config: Config) -> set[str]:
    """The topics the routing processor's rules and default route name, read from its raw table
    (the core never imports a plugin; the plugin validates the table when the worker starts)."""
    table = config.processors.get("routing")
    if not isinstance(table, dict) or table.get("enabled", True) is False:
        return set()
    actions = [table.get("default")]
    rules = table.get("rules")
    if isinstance(rules, list):
        actions += [rule.get("then") for rule in rules if isinstance(rule, dict) and rule.get("enabled", True)]
    return {a["topic"] for a in actions if isinstance(a, dict) and isinstance(a.get("topic"), str) and a["topic"]}


def channel_name(address: str) -> str:
    """A document id for a topic a rule names: ``routed_`` + the name with Kafka's ``.`` as ``_``."""
    return "routed_" + re.sub(r"[^A-Za-z0-9_-]", "_", address)


def headers_schema(schema_id: str, *, cloudevents: bool) -> dict[str, Any]:
    """The record headers (gateway/bus/producer.py ``record_for``; the ``ce_*`` ones from
    gateway/bus/cloudevents.py, required when the configuration turns them on)."""
    text: dict[str, Any] = {"type": "string"}
    properties: dict[str, Any] = {
        "schema": {**text, "const": schema_id, "description": "The record's schema id: route without decoding."},
        "content-type": {**text, "const": "application/json", "description": "The value's media type."},
        "channel": {**text, "description": "The channel type (`whatsapp`, `email`...); empty when unknown."},
        "instance": {**text, "description": "The channel instance; empty when unknown."},
        "traceparent": {
            **text,
            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C Trace Context; a caller's traceparent is continued.",
        },
        "record-id": {**text, "description": "The record's `id`: drop redeliveries without decoding."},
    }
    required = list(properties)
    if schema_id == MESSAGE_SCHEMA:
        properties["input-id"] = {**text, "description": "Processed and outbound records: the id of the input record."}
        properties["dedup"] = {
            **text,
            "const": "skipped",
            "description": "Inbound: published while Redis was unavailable, so duplicates are possible.",
        }
        properties["replay-of"] = {**text, "description": "Replayed by `gateway dlq replay`: the DLQ record's id."}
    ce: dict[str, Any] = {
        "ce_specversion": {**text, "const": "1.0", "description": "CloudEvents binary mode: the spec version."},
        "ce_id": {**text, "description": "CloudEvents `id`: the record's `id`."},
        "ce_source": {**text, "description": "CloudEvents `source`: `/<topic prefix without its dot>/<instance>`."},
        "ce_type": {
            **text,
            "pattern": "^" + re.escape(schema_id.partition("/")[0]) + r"\.[a-z_]+\.v1$",
            "description": "CloudEvents `type`: " + TYPE_DESCRIPTIONS[schema_id],
        },
        "ce_time": {
            **text,
            "format": "date-time",
            "description": "CloudEvents `time` (RFC 3339): "
            + ("`received_at`." if schema_id == MESSAGE_SCHEMA else "`occurred_at`."),
        },
        "ce_dataschema": {**text, "const": schema_urn(schema_id), "description": "The `$id` of the JSON Schema."},
        "ce_subject": {**text, "description": "CloudEvents `subject`: the conversation id, when the record has one."},
    }
    for name, spec in ce.items():
        properties[name] = (
            spec
            if cloudevents
            else {**spec, "description": spec["description"] + " With `[gateway] cloudevents = true`."}
        )
    if cloudevents:
        required += [name for name in ce if name != "ce_subject"]
    return {"type": "object", "properties": properties, "required": required}


TYPE_DESCRIPTIONS = {
    MESSAGE_SCHEMA: "`gateway.message.inbound.v1` or `gateway.message.outbound.v1` (the direction).",
    EVENT_SCHEMA: "`gateway.event.<status>.v1`, e.g. `gateway.event.delivered.v1`.",
    DLQ_SCHEMA: "`gateway.dlq.<stage>.v1`, e.g. `gateway.dlq.process.v1`.",
    CONVERSATION_SCHEMA: "`gateway.conversation.<type>.v1`, e.g. `gateway.conversation.resolved.v1`.",
    AUDIT_SCHEMA: "`gateway.audit.<action>.v1`, e.g. `gateway.audit.dlq_replay.v1`.",
}


def _messages(cloudevents: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message components and the payload schemas they reference."""
    schema_ids = list(RECORD_TYPES)
    payloads, schemas = msgspec.json.schema_components(
        [RECORD_TYPES[schema_id] for schema_id in schema_ids], ref_template=SCHEMA_REF
    )
    messages: dict[str, Any] = {}
    for schema_id, payload in zip(schema_ids, payloads, strict=True):
        name, key = MESSAGES[schema_id]
        messages[name] = {
            "name": schema_id,
            "title": schema_id,
            "summary": SUMMARIES[schema_id],
            "contentType": "application/json",
            "headers": headers_schema(schema_id, cloudevents=cloudevents),
            "payload": payload,
            "description": (
                f"JSON of `{RECORD_TYPES[schema_id].__name__}` in `gateway/model.py`; the same schema is "
                f"`schemas/{SCHEMA_FILES[schema_id]}` (`$id` `{schema_urn(schema_id)}`)."
            ),
            "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": KAFKA_BINDING}},
        }
    return messages, schemas


def _server(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Kafka server and, with SASL, its security scheme."""
    kafka = config.kafka
    hosts = [host.strip() for host in kafka.bootstrap_servers.split(",") if host.strip()]
    server: dict[str, Any] = {
        "host": hosts[0],
        "protocol": "kafka-secure" if kafka.security_protocol in ("SSL", "SASL_SSL") else "kafka",
        "description": "The Kafka cluster (`[kafka] bootstrap_servers`: " + ", ".join(hosts) + ").",
    }
    schemes: dict[str, Any] = {}
    if kafka.sasl_mechanism is not None:
        kind = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}[kafka.sasl_mechanism]
        schemes["sasl"] = {"type": kind, "description": f"SASL {kafka.sasl_mechanism} (`[kafka] sasl_*`)."}
        server["security"] = [{"$ref": "#/components/securitySchemes/sasl"}]
    return server, schemes


def build(config: Config) -> dict[str, Any]:
    """The AsyncAPI document of ``config``'s deployment, as plain data (YAML/JSON-ready)."""
    messages, schemas = _messages(config.gateway.cloudevents)
    server, schemes = _server(config)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in topics_of(config):
        channel: dict[str, Any] = {
            "address": topic.address,
            "title": topic.title,
            "description": topic.description,
            "messages": {},
            "bindings": {
                "kafka": {
                    "topic": topic.address,
                    "partitions": config.kafka.partitions,
                    "replicas": config.kafka.replication_factor,
                    "bindingVersion": KAFKA_BINDING,
                }
            },
        }
        message_refs = []
        for schema_id in topic.schemas:
            name = MESSAGES[schema_id][0]
            channel["messages"][name] = {"$ref": f"#/components/messages/{name}"}
            message_refs.append({"$ref": f"#/channels/{topic.name}/messages/{name}"})
        channels[topic.name] = channel
        for flow in topic.flows:
            operation: dict[str, Any] = {
                "action": flow.action,
                "channel": {"$ref": f"#/channels/{topic.name}"},
                "summary": flow.summary,
                "messages": [dict(ref) for ref in message_refs],
                "tags": [{"$ref": f"#/components/tags/{flow.actor}"}],
            }
            if flow.group is not None:
                operation["bindings"] = {
                    "kafka": {"groupId": {"type": "string", "const": flow.group}, "bindingVersion": KAFKA_BINDING}
                }
            operations[f"{flow.actor}_{flow.action}_{topic.name}"] = operation
    components: dict[str, Any] = {
        "messages": messages,
        "schemas": schemas,
        "tags": {actor: {"name": actor, "description": text} for actor, text in ACTORS.items()},
    }
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:message-gateway:topics",
        "info": {
            "title": "message-gateway topics",
            "version": CONTRACT_VERSION,
            "description": (
                "The Kafka topics of a message-gateway deployment: what each carries, its key and headers, "
                "who publishes to it and who reads it. Operations are tagged with the process that performs "
                "them; `downstream` marks what services outside the gateway do (docs/consumers.md). "
                "Generated by `gateway schema asyncapi`; the payload schemas are those of `schemas/*.json`."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"$ref": f"#/components/tags/{actor}"} for actor in ACTORS],
        },
        "defaultContentType": "application/json",
        "servers": {"kafka": server},
        "channels": channels,
        "operations": operations,
        "components": components,
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors and aliases, which some AsyncAPI tools do not follow."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(config: Config) -> str:
    """The document as YAML, deterministic for a configuration (key order as built)."""
    text: str = yaml.dump(build(config), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return text
