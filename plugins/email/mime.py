"""Email: mime (being written)."""
