"""Channel plugin: line (being written)."""
