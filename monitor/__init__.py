"""operando-monitor: a real-time streaming monitor for operando X-ray battery experiments."""

__version__ = "0.1.0"
