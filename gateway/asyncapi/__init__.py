"""The AsyncAPI document of the topics (``gateway schema asyncapi``) and its Markdown view."""

from gateway.asyncapi.document import build, render, routing_topics, topics_of

__all__ = ["build", "render", "routing_topics", "topics_of"]
