"""Benchmarks (run by `operando-monitor bench ...`; not imported by the daemon)."""
