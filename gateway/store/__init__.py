"""Redis-backed state: dedup, rate limits, replay guards, conversation state."""
