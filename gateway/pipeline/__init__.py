"""The processing pipeline: processor chain and the worker that runs it."""
