"""Torch modules for the shipped models."""
