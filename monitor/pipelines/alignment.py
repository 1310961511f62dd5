"""alignment: TXM-XANES particle identification, tracking, registration and XANES per frame.

Per frame (after Su et al. 2024): ParticleNet on the frame block-averaged to ~128 px →
watershed instances → Hungarian tracking with SSIM confirmation → sub-pixel centre of mass
of each particle's masked ROI (on the frame binned by ``reg_bin``) → displacement, velocity,
acceleration; rigid part (mean motion) and non-rigid residual. With ``detect_every = N > 1``
the network runs on every N-th frame (and whenever a track is missing); in between, the masks
follow each particle (whole pixels; the frame's common shift by phase correlation first, then
re-placed at the measured centre and measured again). The centre of mass is measured on every
frame.

At the end of an energy scan the aligned ROI stacks give per-pixel edge-energy and
oxidation-state maps (``monitor.analysis.xanes``), emitted as arrays on that frame's result.
A scan ends on the frame whose header says so (``ndattr.scan_point == scan_points - 1`` or
``scan_end``), when ``options.scan_points`` frames have been seen, or when the energy
reaches ``options.scan_end_eV``; a series change or an energy drop of more than 1 eV starts a
new scan (an unfinished one is then emitted on that frame, flagged ``xanes_partial``).
Tracks carry on across scans; a change of ``ndattr.sample`` (new sample or field of view)
starts tracking afresh.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.errors import EngineError
from engines.prep.particle_prep import TRAINING_DIAMETER_PX
from engines.prep.particles import downsample, pad_to_multiple
from engines.registry import load_manifest
from engines.runtime import create_runner
from monitor.analysis.input_prep import (
    INPUT_CONSTANT,
    INPUT_NO_PARTICLES,
    INPUT_OK,
    INPUT_ONE_HUGE,
    SeriesInput,
    check_frame,
    featureless,
)
from monitor.analysis.particles import ParticleROI, particle_rois, split
from monitor.analysis.refine import ParticleRefiner
from monitor.analysis.registration import CentreEstimate, ShiftTracker, aligned_crop, box_mean, register_all
from monitor.analysis.tracking import Kinematics, KinematicsState, Tracker, TrackUpdate, thumbnails
from monitor.analysis.xanes import ScanAccumulator, XanesMaps, XanesSettings
from monitor.config import PipelineSettings, parse_options
from monitor.errors import ConfigError
from monitor.frames import Frame
from monitor.pipelines.alignment_options import (
    DEFAULT_MODEL,
    FRAME_SCALARS,
    AlignmentOptions,
    particle_scalar_names,
)
from monitor.pipelines.base import ArraySpec, Latency, Result, ResultSchema

log = logging.getLogger("monitor.pipelines.alignment")


@dataclass(frozen=True)
class FrameState:
    """What the display needs of one result (kept for the last few frames only)."""

    labels: np.ndarray
    tails: dict[int, np.ndarray]


class AlignmentPipeline:
    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.streams = settings.streams
        self.opts = parse_options(AlignmentOptions, settings.options, f"pipelines.{settings.name}.options")
        o = self.opts
        if o.max_particles < 1 or o.detect_every < 1 or o.reg_bin < 1 or o.roi_size < 8:
            raise ConfigError(
                f"pipelines.{self.name}.options", "max_particles, detect_every, reg_bin >= 1; roi_size >= 8"
            )
        model = settings.model or DEFAULT_MODEL
        try:
            self.manifest = load_manifest(model, settings.weights_dir or None)
            self.runner = create_runner(
                self.manifest,
                settings.backend,
                threads=settings.threads,
                weights_dir=settings.weights_dir or None,
                precision=settings.backend_precision,
            )
            self.runner.activate()
            log.info(
                "pipeline %s: model %s %s on %s", self.name, model, self.manifest.version, settings.backend
            )
        except EngineError as exc:
            raise ConfigError(f"pipelines.{self.name}.model", f"cannot load model {model!r}: {exc}") from exc
        split_cfg = self.manifest.extra.get("split", {})
        self._fg_thr = float(split_cfg.get("fg_threshold", 0.5)) if isinstance(split_cfg, dict) else 0.5
        self._seed_thr = float(split_cfg.get("seed_threshold", 0.45)) if isinstance(split_cfg, dict) else 0.45
        self._multiple = int(self.manifest.extra.get("multiple", 4))  # type: ignore[call-overload]
        if o.particle_diameter_px < 0:
            raise ConfigError(f"pipelines.{self.name}.options.particle_diameter_px", "must be >= 0")
        target = float(self.manifest.normalisation.get("training_diameter_px", TRAINING_DIAMETER_PX))
        self.input = SeriesInput(o.contrast, o.particle_diameter_px, o.downsample, target, self.name)
        self._slots_warned: set[str] = set()
        self.refiner = ParticleRefiner(
            o.min_quality, apply=o.refine != "off", min_texture=0.25 if o.refine == "auto" else 0.0
        )
        self.tracker = Tracker(o.max_particles, o.gate_px, o.confirm_px, o.min_ssim, o.max_missing)
        self.kin = Kinematics(o.rate_window, o.tail)
        self.xanes_settings = XanesSettings(ni2_edge_eV=o.ni2_edge_eV, ni4_edge_eV=o.ni4_edge_eV)
        self.scan = ScanAccumulator(o.roi_size, self.xanes_settings)
        self._rois: list[ParticleROI] = []
        self._roi_track: dict[int, int] = {}
        self._since_detect = 0
        self._series: str | None = None
        self._last_energy: float | None = None
        self._scan_index = 0
        self._scan_point = 0
        self._latest_maps: dict[int, XanesMaps] = {}
        self._display: OrderedDict[int, FrameState] = OrderedDict()
        self._last_labels: np.ndarray | None = None
        self._frames_seen = 0
        self._area: dict[int, float] = {}
        """Track id → particle area (full-resolution px²) when the track started."""
        self._sample: str | int | float | bool | None = None
        self._scalar_names = FRAME_SCALARS + particle_scalar_names(o.max_particles)
        self._shift = ShiftTracker(9)
        self.network_calls = 0
        self.scale_redetections = 0
        """Series whose first frame was detected again at the block factor its instances gave."""

    # -- schema -------------------------------------------------------------------------
    def schema(self) -> ResultSchema:
        p, r, n = self.opts.max_particles, self.opts.roi_size, self.opts.label_size
        return ResultSchema(
            scalars=FRAME_SCALARS + particle_scalar_names(p),
            arrays=(
                ArraySpec("centroid", (p, 2), "float32"),
                ArraySpec("displacement", (p, 2), "float32"),
                ArraySpec("track_id", (p,), "int32"),
                ArraySpec("labels", (n, n), "uint8"),
                ArraySpec("xanes_edge_eV", (p, r, r), "float32"),
                ArraySpec("xanes_oxidation", (p, r, r), "float32"),
            ),
        )

    def close(self) -> None:
        self.runner.deactivate()

    # -- per frame --------------------------------------------------------------------
    def network_factor(self, shape: tuple[int, int]) -> int:
        """Block factor of the current series (decided on its first frame)."""
        d = self.input.decision
        f = d.factor if d is not None else (self.opts.downsample or max(1, round(max(shape) / 128)))
        return max(f, self.opts.reg_bin)

    def detect_labels(self, smalls: list[np.ndarray]) -> list[np.ndarray]:
        """Instance labels for each normalised low-resolution image (one batched network call)."""
        h, w = smalls[0].shape
        batch = np.stack([pad_to_multiple(s, self._multiple) for s in smalls])[:, None]
        out = self.runner.infer({"image": np.ascontiguousarray(batch, dtype=np.float32)})
        self.network_calls += 1
        return [
            split(out["fg"][i, 0, :h, :w], out["dist"][i, 0, :h, :w], self._fg_thr, self._seed_thr)
            for i in range(len(smalls))
        ]

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        t0 = time.perf_counter()
        prepared = []
        for frame in frames:
            arr, flag = check_frame(frame.array)
            if flag != INPUT_CONSTANT:
                self.input.decide((frame.series, frame.meta.extra.get("sample"), arr.shape), arr)
            prepared.append(self._prepare(arr, flag))
        need = [i for i in range(len(frames)) if self._needs_detection(frames[i], i)]
        labels_by_frame: dict[int, np.ndarray] = {}
        for i in list(need):  # nothing but noise (or a constant frame): no particles, no network call
            arr, f, small, raw, flag = prepared[i]
            if flag == INPUT_CONSTANT or featureless(arr, raw, f):
                labels_by_frame[i] = np.zeros(small.shape, np.int32)
                need.remove(i)
        if need:
            shapes = {prepared[i][2].shape for i in need}
            for shape in shapes:
                idx = [i for i in need if prepared[i][2].shape == shape]
                for i, lab in zip(idx, self.detect_labels([prepared[i][2] for i in idx]), strict=True):
                    labels_by_frame[i] = lab
            self._confirm_scale(frames, prepared, need, labels_by_frame)
        results = []
        for i, frame in enumerate(frames):
            arr, f, small, raw, flag = prepared[i]
            results.append(self._one(frame, arr, f, small, raw, flag, labels_by_frame.get(i)))
        dt = (time.perf_counter() - t0) / max(len(frames), 1)
        return [
            Result(r.pipeline, r.frame, r.scalars, r.arrays, Latency(compute=dt, batch_size=len(frames)))
            for r in results
        ]

    def _prepare(self, arr: np.ndarray, flag: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
        f = self.network_factor(arr.shape)
        raw = downsample(arr, f)
        small = self.input.network_input(raw) if self.input.decision else np.zeros_like(raw)
        return arr, f, small, raw, flag

    def _confirm_scale(
        self, frames: Sequence[Frame], prepared: list, need: list[int], labels: dict[int, np.ndarray]
    ) -> None:
        """First network pass of a series with an estimated diameter: if the instances' diameter
        gives another block factor, prepare this batch's frames of that series again and detect
        once more (once per series)."""
        if not self.input.unconfirmed:
            return
        i = min(need)
        arr, f = prepared[i][0], prepared[i][1]
        if not self.input.confirm(labels[i], f, arr.shape):
            return
        same = (frames[i].series, arr.shape, f)
        redo = [
            j
            for j in range(i, len(frames))
            if (frames[j].series, prepared[j][0].shape, prepared[j][1]) == same
        ]
        for j in redo:
            prepared[j] = self._prepare(prepared[j][0], prepared[j][4])
        again = [j for j in redo if j in need]
        self.scale_redetections += 1
        for j, lab in zip(again, self.detect_labels([prepared[j][2] for j in again]), strict=True):
            labels[j] = lab

    def _needs_detection(self, frame: Frame, i: int) -> bool:
        if not self._rois or frame.series != self._series or i > 0 or self.tracker.missing_now:
            return True  # batched frames: detect each (masks cannot follow shifts not yet measured)
        return self._since_detect + 1 >= self.opts.detect_every

    def _new_scan(self, frame: Frame, energy: float | None) -> bool:
        """True if this frame starts a new scan (series change or energy drop)."""
        if frame.series != self._series:
            return self._series is not None
        return energy is not None and self._last_energy is not None and energy < self._last_energy - 1.0

    def _scan_ends(self, frame: Frame, energy: float | None) -> bool:
        extra = frame.meta.extra
        pts, pt = extra.get("scan_points"), extra.get("scan_point")
        if extra.get("scan_end") is True:
            return True
        if isinstance(pts, int) and isinstance(pt, int) and not isinstance(pts, bool) and pts > 0:
            return pt >= pts - 1
        if self.opts.scan_points > 0:
            return self._scan_point >= self.opts.scan_points - 1
        return self.opts.scan_end_eV > 0 and energy is not None and energy >= self.opts.scan_end_eV - 1e-6

    def _one(
        self,
        frame: Frame,
        arr: np.ndarray,
        f: int,
        small: np.ndarray,
        raw: np.ndarray,
        flag: int,
        labels: np.ndarray | None,
    ) -> Result:
        o = self.opts
        energy = frame.meta.energy_eV
        partial_maps: dict[int, XanesMaps] = {}
        partial = False
        if self._new_scan(frame, energy):
            if self.scan.frames >= self.xanes_settings.min_energies:
                partial_maps, partial = self.scan.finish(self._xbin(f)), True
            self.scan.reset()
            self._scan_index += 1
            self._scan_point = 0
        # A new series is a new scan of the same sample: tracks and their motion history carry on;
        # a new sample (``ndattr.sample`` changes) starts tracking afresh.
        sample = frame.meta.extra.get("sample")
        if sample != self._sample:
            if self._sample is not None:
                self.tracker.reset()
                self.kin.reset()
                self._area.clear()
                self._rois = []
                self._shift.reset()
                self.refiner.reset()
            self._sample = sample
        self._series = frame.series
        rb = o.reg_bin
        binned = self.input.registration_image(downsample(arr, rb), raw)
        if o.smooth > 1:
            binned = box_mean(binned, o.smooth)
        if labels is not None:
            rois = [
                r
                for r in particle_rois(labels, f // rb, binned.shape)
                if r.area_px * rb * rb >= o.min_area_px
            ]
            self._shift.update(small, measure=False)
            rois = self._keep_radii(rois, rb)
            self._since_detect = 0
        else:
            rois = self._propagated(rb, self._shift.update(small) * f)
            self._since_detect += 1
        est = register_all(binned, rois, o.split_passes if labels is not None else 1)
        if labels is None and o.refine_masks:
            rois, est = self._refine(binned, rois, est)
        good = [(r, e) for r, e in zip(rois, est, strict=True) if e.weight > 0]
        if labels is not None:  # masks made now: remember where the particle was when made
            good = [(r.anchored((e.y, e.x)), e) for r, e in good]
        # Whole particles first (they get slots first), larger before smaller.
        good.sort(key=lambda re: (re[0].edge_cut, -re[0].area_px))
        flag = self._flag_rois(frame, arr.shape, [r for r, _ in good], flag)
        rois = [r for r, _ in good]
        centres = np.array([((e.y + 0.5) * rb - 0.5, (e.x + 0.5) * rb - 0.5) for _, e in good]).reshape(-1, 2)
        thumbs = thumbnails(small, (centres + 0.5) / f - 0.5, 24)
        self._frames_seen += 1
        upd = self.tracker.update(centres, thumbs, score_all=self._frames_seen % o.ssim_every == 0)
        self._rois = rois
        self._roi_track = {r.label: t.id for r, t in zip(rois, upd.assignment, strict=True) if t is not None}
        for r, t in zip(rois, upd.assignment, strict=True):
            if t is not None:
                self._area.setdefault(t.id, r.area_px * rb * rb)
        for tid in upd.dropped:
            self._area.pop(tid, None)
        self._refine_tracks(binned, [(r, e) for r, e in good], upd, rb)
        tracks = [t for t in upd.assignment if t is not None]
        confident = [not t.edge and not t.quality < o.min_quality for t in tracks]
        state = self.kin.update(frame.t_detector, tracks, self.tracker.tracks, confident)
        if o.xanes and energy is not None:
            xb = self._xbin(f)
            for r, t in zip(rois, upd.assignment, strict=True):
                if t is None:
                    continue
                ext = self.scan.extent(t.id, r.radius * rb, xb)
                crop = aligned_crop(arr, (float(t.position[0]), float(t.position[1])), ext, xb)
                self.scan.add(t.id, energy, crop, r.radius * rb)
            self.scan.frames += 1
        maps: dict[int, XanesMaps] = partial_maps
        if energy is not None and self._scan_ends(frame, energy):
            maps, partial = self.scan.finish(self._xbin(f)), False
            self.scan.reset()
            self._scan_point = 0
            self._scan_index += 1
            scan_reported = self._scan_index - 1
        else:
            self._scan_point += 1 if energy is not None else 0
            scan_reported = self._scan_index
        self._last_energy = energy
        if maps:
            self._latest_maps = {t.slot: maps[t.id] for t in self.tracker.tracks if t.id in maps}
        res = self._result(frame, state, upd, labels, rois, maps, partial, energy, scan_reported)
        d = self.input.decision
        # Result.scalars is a read-only Mapping: add the input scalars in a new dict
        scalars = {
            **res.scalars,
            "input_flag": float(flag),
            "contrast_absorbance": float(d.contrast == "absorbance") if d else float("nan"),
            "particle_diameter_px": float(d.diameter_px) if d else float("nan"),
            "block_factor": float(f),
            "n_whole": float(sum(1 for r in rois if not r.edge_cut)),
            "n_edge_cut": float(sum(1 for r in rois if r.edge_cut)),
        }
        return dataclasses.replace(res, scalars=scalars)

    def _refine_tracks(
        self, binned: np.ndarray, good: list[tuple[ParticleROI, CentreEstimate]], upd: TrackUpdate, rb: int
    ) -> None:
        """Edge flag and registration quality of each matched track; with ``refine``, its
        position moved by the phase-correlation residual when that is confident."""
        for (r, e), t in zip(good, upd.assignment, strict=True):
            if t is None:
                continue
            # Sticky: a track that was ever cut by the field edge measured part of a particle.
            t.edge = t.edge or r.edge_cut
            ref = self.refiner.refine(t.id, binned, r, (e.y, e.x), rb)
            t.quality = ref.quality
            if ref.applied:
                t.position = t.position + np.array([ref.dy, ref.dx]) * rb
        self.refiner.forget({t.id for t in self.tracker.tracks})

    def _flag_rois(self, frame: Frame, shape: tuple[int, ...], rois: list[ParticleROI], flag: int) -> int:
        """The frame's input flag after detection (no particles, one huge); logs once per series;
        warns once per series when whole particles outnumber the slots."""
        if flag == INPUT_OK and not rois:
            flag = INPUT_NO_PARTICLES
        elif flag == INPUT_OK and len(rois) == 1 and rois[0].area_px > 0.5 * shape[0] * shape[1]:
            flag = INPUT_ONE_HUGE
        self.input.report(frame.series, flag)
        whole = sum(1 for r in rois if not r.edge_cut)
        if whole > self.opts.max_particles and frame.series not in self._slots_warned:
            self._slots_warned.add(frame.series)
            log.warning(
                "pipeline %s: series %s: %d whole particles but %d slots (options.max_particles): "
                "the smallest are untracked",
                self.name, frame.series, whole, self.opts.max_particles,
            )  # fmt: skip
        return flag

    def _refine(
        self, binned: np.ndarray, rois: list[ParticleROI], est: list[CentreEstimate]
    ) -> tuple[list[ParticleROI], list[CentreEstimate]]:
        """Propagated masks sat where the particle was predicted; put them where it was measured
        and measure again (a lagging mask biases the background plane), ``refine_passes`` times.

        Only particles whose masks moved, or whose split circle was off by more than half a
        pixel, can change; the others keep their measurement."""
        for _ in range(self.opts.refine_passes):
            moved = [r.follow((e.y, e.x)) if e.weight > 0 else r for r, e in zip(rois, est, strict=True)]
            redo = [
                i
                for i, (r, m, e) in enumerate(zip(rois, moved, est, strict=True))
                if m.origin != r.origin
                or (r.neighbours and np.hypot(e.y - r.centroid[0], e.x - r.centroid[1]) > 0.5)
            ]
            rois = moved
            if not redo:
                break
            est = register_all(binned, rois, 1, redo=redo, previous=est)
        return rois, est

    def _xbin(self, f: int) -> int:
        return self.opts.xanes_bin or max(1, f // 4)

    def _keep_radii(self, rois: list[ParticleROI], rb: int) -> list[ParticleROI]:
        """Give each new ROI the area its track had when it started (matched by position).

        The split between touching particles depends on their radii; the network's masks grow
        and shrink a little with the energy-dependent contrast, and that must not move the split."""
        if not self._area:
            return rois
        tracks = [t for t in self.tracker.tracks if t.id in self._area]
        if not tracks:
            return rois
        pos = np.array([t.predicted() for t in tracks])
        out = []
        for r in rois:
            c = np.array([(r.centroid[0] + 0.5) * rb - 0.5, (r.centroid[1] + 0.5) * rb - 0.5])
            d = np.linalg.norm(pos - c[None], axis=1)
            i = int(np.argmin(d))
            if d[i] <= self.opts.confirm_px:
                r = dataclasses.replace(r, area_px=self._area[tracks[i].id] / (rb * rb))
            out.append(r)
        return out

    def _propagated(self, rb: int, common: np.ndarray) -> list[ParticleROI]:
        """Previous frame's ROIs, masks shifted by whole binned pixels onto each particle's last centre."""
        by_id = {t.id: t for t in self.tracker.tracks}
        out = []
        for r in self._rois:
            t = by_id.get(self._roi_track.get(r.label, -1))
            if t is None or t.missing:
                continue
            # Masks follow the particle's last registered centre (full-res → binned grid).
            y, x = t.position + common
            cy, cx = (y + 0.5) / rb - 0.5, (x + 0.5) / rb - 0.5
            out.append(r.follow((cy, cx)))
        return out

    # -- outputs ------------------------------------------------------------------------
    def _result(
        self,
        frame: Frame,
        state: KinematicsState,
        upd: TrackUpdate,
        labels: np.ndarray | None,
        rois: list[ParticleROI],
        maps: dict[int, XanesMaps],
        partial: bool,
        energy: float | None,
        scan_reported: int,
    ) -> Result:
        o = self.opts
        p = o.max_particles
        scalars: dict[str, float] = dict.fromkeys(self._scalar_names, float("nan"))
        centroid = np.full((p, 2), np.nan, np.float32)
        disp = np.full((p, 2), np.nan, np.float32)
        tid = np.full((p,), -1, np.int32)
        for t in self.tracker.tracks:
            k = state.per_track.get(t.id)
            if k is None or t.missing:
                continue
            s = t.slot
            centroid[s], disp[s], tid[s] = t.position, k.displacement, t.id
            vals = {
                "id": t.id, "y": t.position[0], "x": t.position[1], "dy": k.displacement[0],
                "dx": k.displacement[1], "vy": k.velocity[0], "vx": k.velocity[1],
                "speed": float(np.hypot(*k.velocity)), "acc": float(np.hypot(*k.acceleration)),
                "nonrigid": float(np.hypot(*k.nonrigid)), "ssim": t.ssim,
                "edge_cut": float(t.edge), "quality": t.quality,
            }  # fmt: skip
            for name, v in vals.items():
                scalars[f"p{s}_{name}"] = float(v)
        arrays: dict[str, np.ndarray] = {"centroid": centroid, "displacement": disp, "track_id": tid}
        slot_of = {t.id: t.slot for t in self.tracker.tracks}
        if maps:
            edge = np.full((p, o.roi_size, o.roi_size), np.nan, np.float32)
            ox = np.full_like(edge, np.nan)
            for track_id, m in maps.items():
                slot = slot_of.get(track_id)
                if slot is None:
                    continue
                edge[slot], ox[slot] = m.edge_eV, m.oxidation
                scalars[f"p{slot}_edge_eV"] = m.mean_edge_eV
            arrays["xanes_edge_eV"], arrays["xanes_oxidation"] = edge, ox
            means = [m.mean_edge_eV for m in maps.values() if np.isfinite(m.mean_edge_eV)]
            scalars["xanes_mean_edge_eV"] = float(np.mean(means)) if means else float("nan")
        lab_small = self._slot_labels(labels, rois, slot_of)
        arrays["labels"] = lab_small
        ssims = [t.ssim for t in self.tracker.tracks if not t.missing and np.isfinite(t.ssim)]
        speeds = [float(np.hypot(*k.velocity)) for k in state.per_track.values()]
        scalars.update(
            n_particles=float(len(rois)), n_tracks=float(len(self.tracker.tracks)),
            lost_now=float(self.tracker.missing_now), lost_total=float(self.tracker.lost_total),
            found_total=float(self.tracker.found_total),
            untracked=float(sum(1 for a in upd.assignment if a is None)),
            rigid_dy=float(state.rigid[0]), rigid_dx=float(state.rigid[1]),
            nonrigid_rms_px=state.nonrigid_rms, nonrigid_max_px=state.nonrigid_max,
            nonrigid_rate_px_s=state.nonrigid_rate,
            mean_speed_px_s=float(np.mean(speeds)) if speeds else float("nan"),
            ssim_mean=float(np.mean(ssims)) if ssims else float("nan"),
            energy_eV=float(energy) if energy is not None else float("nan"),
            scan_index=float(scan_reported), scan_point=float(self._scan_point),
            detected=1.0 if labels is not None else 0.0,
            xanes_ready=1.0 if maps else 0.0, xanes_partial=1.0 if (maps and partial) else 0.0,
            xanes_particles=float(len(maps)),
        )  # fmt: skip
        self._remember(frame, lab_small, state)
        return Result(self.name, frame, scalars, arrays)

    def _slot_labels(
        self, labels: np.ndarray | None, rois: list[ParticleROI], slot_of: dict[int, int]
    ) -> np.ndarray:
        """Label map (value = slot + 1) resampled to ``label_size``² for the store and display.

        On frames without a network pass the last detection's labels are shown."""
        n = self.opts.label_size
        out = np.zeros((n, n), np.uint8)
        if labels is None:
            labels = self._last_labels
            if labels is None:
                return out
        self._last_labels = labels
        lut = np.zeros(int(labels.max()) + 1, np.uint8)
        for r in rois:
            s = slot_of.get(self._roi_track.get(r.label, -1))
            if s is not None and r.label < lut.size:
                lut[r.label] = s + 1
        h, w = labels.shape
        yi = np.minimum((np.arange(n) + 0.5) * h / n, h - 1).astype(int)
        xi = np.minimum((np.arange(n) + 0.5) * w / n, w - 1).astype(int)
        return lut[labels[yi][:, xi]]

    def _remember(self, frame: Frame, lab: np.ndarray, state: KinematicsState) -> None:
        self._display[frame.seq] = FrameState(
            lab, {t.slot: np.array(self.kin.tail(t.id)) for t in self.tracker.tracks}
        )
        while len(self._display) > 16:
            self._display.popitem(last=False)

    def display_overlays(self, result: Result, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """``labels`` (slot + 1 at display size), ``tracks`` (P, tail, 2) in display px, ``xanes_edge_eV``."""
        st = self._display.get(result.frame.seq)
        if st is None:
            return {}
        h, w = shape
        n = st.labels.shape[0]
        yi = np.minimum((np.arange(h) + 0.5) * n / h, n - 1).astype(int)
        xi = np.minimum((np.arange(w) + 0.5) * n / w, n - 1).astype(int)
        lab = st.labels[yi][:, xi]
        fh, fw = result.frame.array.shape
        p, tail = self.opts.max_particles, self.opts.tail
        tracks = np.full((p, tail, 2), np.nan, np.float32)
        for slot, pts in st.tails.items():
            if len(pts):
                pts = pts[-tail:]
                tracks[slot, -len(pts) :, 0] = (pts[:, 0] + 0.5) * h / fh - 0.5
                tracks[slot, -len(pts) :, 1] = (pts[:, 1] + 0.5) * w / fw - 0.5
        out = {"labels": lab, "tracks": tracks}
        if self._latest_maps:
            r = self.opts.roi_size
            edge = np.full((p, r, r), np.nan, np.float32)
            for slot, m in self._latest_maps.items():
                edge[slot] = m.edge_eV
            out["xanes_edge_eV"] = edge
        return out
