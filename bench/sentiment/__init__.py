"""Training and evaluation of the built-in sentiment models (see BENCHMARKS.md, "Sentiment")."""
