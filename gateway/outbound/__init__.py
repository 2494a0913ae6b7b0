"""Outbound delivery: the dispatcher that sends replies through channel adapters."""
