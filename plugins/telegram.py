"""Channel plugin: telegram (being written)."""
