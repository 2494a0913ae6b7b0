"""Conversation insights: response clocks, SLA breaches, resolution, reports (docs/conversations.md).

The gateway sees every message in and out of every channel, so it keeps, per conversation, the
state that response-time measurement needs (open or resolved, since when the customer waits, the
SLA due time) in Redis, and publishes what happens as ``gateway.conversation/v1`` records on
``gateway.conversations.v1``.
"""
