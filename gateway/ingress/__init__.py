"""HTTP ingress: webhook endpoint, health, readiness and metrics."""
