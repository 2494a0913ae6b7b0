"""Email: mailgun (being written)."""
