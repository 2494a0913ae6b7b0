"""Test support for the gateway and its plugins, shipped with the package.

Installed with the gateway, the pytest plugin ``gateway.pytest_plugin`` (entry point ``pytest11``)
provides the fixtures; this module holds what tests import: the harness, request builders and
signers, topic readers, unit-test builders (adapters, processors, messages, a recording processor
context), and ``ChannelContract``, the contract suite a channel adapter inherits.
"""

from __future__ import annotations

import pytest

# Plain asserts in the contract report their values, as in the author's own tests.
pytest.register_assert_rewrite("gateway.testing.contract", "gateway.testing.harness")

from gateway.testing.builders import (  # noqa: E402
    RecordingContext,
    inbound_message,
    isolated_store,
    make_channel,
    make_processor,
    recording_context,
    webhook_request,
)
from gateway.testing.contract import ChannelContract, forge_secret  # noqa: E402
from gateway.testing.harness import (  # noqa: E402
    ProviderRequest,
    RunningGateway,
    form_request,
    json_request,
    load_test_plugins,
    make_config,
    running_gateway,
    sign_hmac_sha256_hex,
)
from gateway.testing.records import (  # noqa: E402
    dlq_of,
    events_of,
    headers_of,
    messages_of,
    produce_raw,
    read_records,
    topic_size,
)

__all__ = [
    "ChannelContract",
    "ProviderRequest",
    "RecordingContext",
    "RunningGateway",
    "dlq_of",
    "events_of",
    "forge_secret",
    "form_request",
    "headers_of",
    "inbound_message",
    "isolated_store",
    "json_request",
    "load_test_plugins",
    "make_channel",
    "make_config",
    "make_processor",
    "messages_of",
    "produce_raw",
    "read_records",
    "recording_context",
    "running_gateway",
    "sign_hmac_sha256_hex",
    "topic_size",
    "webhook_request",
]
