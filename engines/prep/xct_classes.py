"""Class ids of the XCT segmentation models (production constants, shared by the synthetic
generator, training, the models' manifests and the daemon's pipeline and morphology)."""

from __future__ import annotations

CLASSES = ("electrode", "electrolyte", "dendrite", "redeposit", "pit")
ELECTRODE, ELECTROLYTE, DENDRITE, REDEPOSIT, PIT = range(5)
N_CLASSES = len(CLASSES)
