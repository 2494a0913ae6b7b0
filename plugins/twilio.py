"""Channel plugin: twilio (being written)."""
