"""Email: sendgrid (being written)."""
