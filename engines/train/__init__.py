"""Training loops, datasets and metrics for the shipped models."""
