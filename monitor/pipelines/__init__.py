"""Pipelines: per-frame analyses that plug into the router."""
