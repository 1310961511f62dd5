"""Options and result names of the alignment pipeline (``[pipelines.options]`` for
``kind = "alignment"``), kept apart from the per-frame work in :mod:`monitor.pipelines.alignment`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_MODEL = "txm_particle_net"
FRAME_SCALARS = (
    "n_particles", "n_tracks", "lost_now", "lost_total", "found_total", "untracked",
    "rigid_dy", "rigid_dx", "nonrigid_rms_px", "nonrigid_max_px", "nonrigid_rate_px_s",
    "mean_speed_px_s", "ssim_mean", "energy_eV", "scan_index", "scan_point", "detected",
    "xanes_ready", "xanes_partial", "xanes_particles", "xanes_mean_edge_eV",
    "input_flag", "contrast_absorbance", "particle_diameter_px", "block_factor", "n_whole", "n_edge_cut",
)  # fmt: skip
PARTICLE_SCALARS = (
    "id", "y", "x", "dy", "dx", "vy", "vx", "speed", "acc", "nonrigid", "ssim", "edge_eV", "edge_cut",
    "quality",
)  # fmt: skip


@dataclass(frozen=True)
class AlignmentOptions:
    contrast: Literal["auto", "transmission", "absorbance"] = "auto"
    """Which way particles go: ``transmission`` (counts or I/I0, dark particles), ``absorbance``
    (optical density or CT slice, bright particles), ``auto`` (decided per series from its first
    frame, logged, stored as ``contrast_absorbance``)."""
    particle_diameter_px: float = 0.0
    """Typical particle diameter (px); 0: estimated per series from its first frame. Sets the
    network block factor (particles ~20 px at the network input) unless ``downsample`` is set."""
    max_particles: int = 32
    """Per-particle slots in the schema (``p{i}_*`` scalars, array rows). Whole particles get
    slots before edge-cut ones; more whole particles than slots is logged (once per series) and
    counted in ``untracked``."""
    detect_every: int = 4
    """Run the network on every N-th frame; in between, masks follow the measured centres
    (``bench alignment`` measures 1 and 4: same registration error, fewer network calls)."""
    downsample: int = 0
    """Network block factor; 0: from the particle diameter (see ``particle_diameter_px``)."""
    reg_bin: int = 1
    """Registration works on the frame binned by this factor (must divide the network factor)."""
    smooth: int = 3
    """Box filter (px of the binned frame) against photon noise before registration (1: off)."""
    roi_size: int = 128
    xanes_bin: int = 0
    """Binning of the XANES crops; 0: network factor / 4 (1 for 460², 2 for 1024²)."""
    label_size: int = 128
    min_area_px: float = 300.0
    gate_px: float = 20.0
    """Largest move (px) from the predicted position matched by position alone; a lost track
    is re-found by appearance (thumbnail SSIM >= 0.7) within twice that."""
    confirm_px: float = 8.0
    min_ssim: float = 0.3
    max_missing: int = 20
    ssim_every: int = 4
    """SSIM of every match on every N-th frame (monitoring); far matches are always confirmed."""
    split_passes: int = 2
    """Registration passes for touching particles on detection frames (2: split again at the
    refined centres; on propagated frames ``refine_masks`` does that)."""
    refine_masks: bool = True
    refine_passes: int = 1
    """How many times ``refine_masks`` re-places the masks and measures again."""
    """On frames without a network pass, re-place the propagated masks at the measured centres
    and measure once more."""
    """SSIM of every match on every N-th frame (monitoring); far matches are always confirmed."""
    refine: Literal["auto", "always", "off"] = "auto"
    """Per-particle sub-pixel refinement: phase correlation of the particle's masked ROI with its
    reference (``monitor.analysis.refine``), applied when the quality is at least ``min_quality``.
    ``auto``: only particles with fine internal texture (grains, cracks, pores: high-passed
    RMS ≥ 0.25 of the particle's contrast); smooth particles keep the silhouette centre of mass,
    which internal contrast changing across the XANES edge cannot drag (measured in
    ``bench alignment``: refinement takes textured particles from 0.55 to 0.24 px and smooth
    ones from 0.25 to 0.37 px). The quality score is computed in every mode."""
    min_quality: float = 0.6
    """Registration quality a particle needs to be refined and to count in the rigid/non-rigid split."""
    rate_window: int = 8
    tail: int = 40
    xanes: bool = True
    scan_points: int = 0
    scan_end_eV: float = 0.0
    ni2_edge_eV: float = 8341.5
    ni4_edge_eV: float = 8346.0


def particle_scalar_names(max_particles: int) -> tuple[str, ...]:
    return tuple(f"p{i}_{k}" for i in range(max_particles) for k in PARTICLE_SCALARS)
