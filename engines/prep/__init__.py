"""Numpy-only pre- and post-processing shared by training and the daemon.

Everything here imports numpy/scipy only (never torch): the ONNX-only daemon imports it, while
``engines.models`` (torch modules) stays out of the runtime (import-linter contract).
"""
