"""First-party plugins. Each module is registered through the `gateway` entry-point group and
uses only `gateway.sdk`, exactly like a third-party plugin would."""
