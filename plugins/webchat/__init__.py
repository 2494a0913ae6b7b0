"""Web chat channel (being written)."""
