"""Email: smtp (being written)."""
