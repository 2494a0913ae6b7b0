"""The operator console served by `gateway serve` at /console/ (docs/console.md)."""
