"""PII masking for the message gateway: detectors and the ``pii_masking`` processor."""
