"""Priorities and tags that several processors raise and add (escalation, routing).

Priorities only ever go up along the chain, and tags are added without duplicates, so a processor
may run again on redelivery without changing the result.
"""

from __future__ import annotations

from typing import Any

from gateway.model import Message, Priority

__all__ = ["PRIORITY_RANK", "Priority", "add_tags", "raise_priority"]

PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "urgent": 3}


def raise_priority(current: str | None, floor: str) -> Priority:
    """The higher of two priorities: escalation and routing never lower one set earlier."""
    if current is None or PRIORITY_RANK[floor] > PRIORITY_RANK[current]:
        return floor  # type: ignore[return-value]
    return current  # type: ignore[return-value]


def add_tags(message: Message, tags: list[str]) -> None:
    """Append to ``tags.labels["tags"]`` without duplicates (processing may be retried)."""
    existing = message.tags.labels.get("tags")
    current: list[Any] = list(existing) if isinstance(existing, list) else [] if existing is None else [existing]
    current.extend(tag for tag in tags if tag not in current)
    message.tags.labels["tags"] = current
