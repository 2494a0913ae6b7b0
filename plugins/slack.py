"""Channel plugin: slack (being written)."""
