"""Channel plugin: meta (being written)."""
