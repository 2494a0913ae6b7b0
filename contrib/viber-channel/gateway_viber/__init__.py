"""Viber bot channel for the message gateway (``type = "viber"``): see ``gateway_viber.channel``."""

__version__ = "1.0.0"
