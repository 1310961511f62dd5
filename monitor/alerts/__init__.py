"""Alarm rules, the alarm state machine, and sinks."""
