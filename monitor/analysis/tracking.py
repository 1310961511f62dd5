"""Particle tracking across frames: Hungarian assignment on centroids, SSIM to confirm.

Each frame's detections (centroids plus a small normalised thumbnail) are assigned to the
existing tracks by ``scipy.optimize.linear_sum_assignment`` on the distance between a track's
predicted position (last position plus its last frame-to-frame step) and each detection,
gated at ``gate_px``. An assignment further than ``confirm_px`` is kept only if the SSIM
(``skimage.metrics.structural_similarity``) between the track's and the detection's thumbnails
reaches ``min_ssim`` — a particle that jumped that far must still look the same.

Tracks not matched are *lost* (counted once per loss); a lost track matched again within
``max_missing`` frames is *found*; after that it is dropped and its slot freed. Every track
holds a fixed slot in ``0 .. max_tracks - 1`` so per-particle outputs have stable names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity


@dataclass
class Track:
    id: int
    slot: int
    position: np.ndarray  # (2,) latest centre (y, x)
    thumb: np.ndarray
    step: np.ndarray = field(default_factory=lambda: np.zeros(2))
    missing: int = 0
    age: int = 1
    ssim: float = float("nan")
    edge: bool = False
    """Last detection touched the field edge (set by the caller)."""
    quality: float = float("nan")
    """Registration quality of the last measurement in [0, 1] (set by the caller)."""

    def predicted(self) -> np.ndarray:
        return self.position + self.step * (1 + self.missing)


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """Result of one frame: ``assignment[i]`` is the track of detection ``i`` (or None)."""

    assignment: tuple[Track | None, ...]
    lost: tuple[int, ...]
    """Track ids that went missing in this frame."""
    found: tuple[int, ...]
    """Track ids matched again after being missing."""
    started: tuple[int, ...]
    dropped: tuple[int, ...]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two equally shaped thumbnails (data range from both)."""
    lo = float(min(a.min(), b.min()))
    hi = float(max(a.max(), b.max()))
    if hi - lo <= 1e-9:
        return 1.0
    win = min(7, *a.shape) | 1
    return float(structural_similarity(a, b, data_range=hi - lo, win_size=win))


def _box_valid(a: np.ndarray, win: int) -> np.ndarray:
    """Means over every full ``win``² window of each image in ``a`` (N, h, w)."""
    c = np.cumsum(np.cumsum(a, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    s = c[:, win:, win:] - c[:, :-win, win:] - c[:, win:, :-win] + c[:, :-win, :-win]
    return s / (win * win)


def ssim_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`ssim` of each pair of equally shaped thumbnails in ``a``, ``b`` (N, h, w), at once.

    Same definition as ``structural_similarity`` (uniform ``win``² window, sample covariance,
    K1 = 0.01, K2 = 0.03, mean over the windows that fit inside the image)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, h, w = a.shape
    win = min(7, h, w) | 1
    lo = np.minimum(a.reshape(n, -1).min(axis=1), b.reshape(n, -1).min(axis=1))
    hi = np.maximum(a.reshape(n, -1).max(axis=1), b.reshape(n, -1).max(axis=1))
    rng = hi - lo
    flat = rng <= 1e-9
    c1 = ((0.01 * rng) ** 2)[:, None, None]
    c2 = ((0.03 * rng) ** 2)[:, None, None]
    ua, ub = _box_valid(a, win), _box_valid(b, win)
    cov = win * win / (win * win - 1.0)
    va = cov * (_box_valid(a * a, win) - ua * ua)
    vb = cov * (_box_valid(b * b, win) - ub * ub)
    vab = cov * (_box_valid(a * b, win) - ua * ub)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    # (skimage filters the whole image, then crops (win - 1) // 2 px: the full windows, as here)
    out = s.reshape(n, -1).mean(axis=1)
    out[flat] = 1.0
    return out


class Tracker:
    def __init__(
        self,
        max_tracks: int = 16,
        gate_px: float = 40.0,
        confirm_px: float = 8.0,
        min_ssim: float = 0.3,
        max_missing: int = 20,
        refind_ssim: float = 0.7,
        refind_gate_px: float = 0.0,
    ) -> None:
        self.max_tracks = max_tracks
        self.refind_ssim = refind_ssim
        """A track left unmatched by position is matched to an unassigned detection that looks
        like it (SSIM of the thumbnails at least this) within ``refind_gate_px``."""
        self.refind_gate_px = refind_gate_px or 2 * gate_px
        self.gate_px = gate_px
        self.confirm_px = confirm_px
        self.min_ssim = min_ssim
        self.max_missing = max_missing
        self.tracks: list[Track] = []
        self._next_id = 1
        self.lost_total = 0
        self.found_total = 0

    def reset(self) -> None:
        self.tracks.clear()

    def _free_slot(self) -> int | None:
        used = {t.slot for t in self.tracks}
        return next((s for s in range(self.max_tracks) if s not in used), None)

    def update(self, centres: np.ndarray, thumbs: list[np.ndarray], score_all: bool = True) -> TrackUpdate:
        """Assign detections (``centres`` (N, 2), one thumbnail each) to tracks.

        SSIM is computed for every match when ``score_all`` (for monitoring), else only for the
        far matches that need confirming."""
        n = len(centres)
        assignment: list[Track | None] = [None] * n
        lost: list[int] = []
        found: list[int] = []
        matched: set[int] = set()
        if self.tracks and n:
            pred = np.array([t.predicted() for t in self.tracks])
            cost = np.linalg.norm(pred[:, None, :] - centres[None, :, :], axis=2)
            big = 1e6
            cost = np.where(cost <= self.gate_px, cost, big)
            rows, cols = linear_sum_assignment(cost)
            pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < big]
            scores = self._scores(pairs, thumbs, cost, score_all)
            for (r, c), score in zip(pairs, scores, strict=True):
                track = self.tracks[r]
                far = cost[r, c] > self.confirm_px
                if far and not score >= self.min_ssim:
                    continue  # far and does not look the same: not this particle
                new_pos = centres[c].astype(np.float64)
                step = (new_pos - track.position) / (1 + track.missing)
                self._take(track, c, new_pos, step, thumbs[c], score, assignment, matched, found)
        self._refind(centres, thumbs, assignment, matched, found)
        dropped: list[int] = []
        keep: list[Track] = []
        for track in self.tracks:
            if id(track) in matched:
                keep.append(track)
                continue
            if track.missing == 0:
                lost.append(track.id)
                self.lost_total += 1
            track.missing += 1
            track.ssim = float("nan")
            if track.missing > self.max_missing:
                dropped.append(track.id)
            else:
                keep.append(track)
        self.tracks = keep
        started: list[int] = []
        for i in range(n):
            if assignment[i] is not None:
                continue
            slot = self._free_slot()
            if slot is None:
                continue  # more particles than slots: untracked (counted by the caller)
            track = Track(self._next_id, slot, centres[i].astype(np.float64), thumbs[i])
            self._next_id += 1
            self.tracks.append(track)
            assignment[i] = track
            started.append(track.id)
        return TrackUpdate(tuple(assignment), tuple(lost), tuple(found), tuple(started), tuple(dropped))

    def _refind(
        self,
        centres: np.ndarray,
        thumbs: list[np.ndarray],
        assignment: list[Track | None],
        matched: set[int],
        found: list[int],
    ) -> None:
        """Re-find tracks by appearance: unmatched tracks vs unassigned detections, best SSIM first."""
        free_t = [t for t in self.tracks if id(t) not in matched]
        free_d = [i for i, a in enumerate(assignment) if a is None]
        if not free_t or not free_d:
            return
        cand: list[tuple[float, int, int]] = []
        for ti, t in enumerate(free_t):
            pred = t.predicted()
            for i in free_d:
                if np.hypot(*(centres[i] - pred)) > self.refind_gate_px:
                    continue
                a, b = t.thumb, thumbs[i]
                if a.shape != b.shape or a.ndim != 2 or min(a.shape) < 7:
                    continue
                cand.append((ssim(a, b), ti, i))
        used_t: set[int] = set()
        used_d: set[int] = set()
        for score, ti, i in sorted(cand, reverse=True):
            if score < self.refind_ssim or ti in used_t or i in used_d:
                continue
            used_t.add(ti)
            used_d.add(i)
            pos = centres[i].astype(np.float64)
            self._take(free_t[ti], i, pos, np.zeros(2), thumbs[i], score, assignment, matched, found)

    def _take(
        self,
        track: Track,
        i: int,
        position: np.ndarray,
        step: np.ndarray,
        thumb: np.ndarray,
        score: float,
        assignment: list[Track | None],
        matched: set[int],
        found: list[int],
    ) -> None:
        """Detection ``i`` continues ``track`` (a re-found track is reported in ``found``)."""
        track.step = step
        track.position = position
        track.thumb = thumb
        track.ssim = score
        track.age += 1
        if track.missing:
            found.append(track.id)
            self.found_total += 1
        track.missing = 0
        assignment[i] = track
        matched.add(id(track))

    def _scores(
        self, pairs: list[tuple[int, int]], thumbs: list[np.ndarray], cost: np.ndarray, score_all: bool
    ) -> list[float]:
        """SSIM of each (track, detection) pair that needs one (NaN for the others), batched."""
        out = [float("nan")] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (r, c) in enumerate(pairs):
            a, b = self.tracks[r].thumb, thumbs[c]
            if (
                a.shape == b.shape
                and a.ndim == 2
                and min(a.shape) >= 7
                and (score_all or cost[r, c] > self.confirm_px)
            ):
                groups.setdefault(a.shape, []).append(k)
        for ks in groups.values():
            vals = ssim_batch(
                np.stack([self.tracks[pairs[k][0]].thumb for k in ks]),
                np.stack([thumbs[pairs[k][1]] for k in ks]),
            )
            for k, v in zip(ks, vals, strict=True):
                out[k] = float(v)
        return out

    @property
    def missing_now(self) -> int:
        return sum(1 for t in self.tracks if t.missing)


def thumbnails(image: np.ndarray, centres: np.ndarray, size: int) -> list[np.ndarray]:
    """:func:`thumbnail` for each of ``centres`` (N, 2), padding the image once."""
    half = size // 2
    padded = np.pad(np.asarray(image, dtype=np.float32), half, mode="edge")
    out = []
    for cy, cx in np.rint(np.asarray(centres, dtype=np.float64).reshape(-1, 2)).astype(int):
        out.append(np.ascontiguousarray(padded[cy : cy + size, cx : cx + size]))
    return out


def thumbnail(image: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """A ``size``² crop around ``centre`` (edge-padded), for SSIM confirmation."""
    half = size // 2
    cy, cx = int(round(centre[0])), int(round(centre[1]))
    padded = np.pad(image, half, mode="edge")
    return np.ascontiguousarray(padded[cy : cy + size, cx : cx + size], dtype=np.float32)


@dataclass
class TrackKinematics:
    """Motion of one track since it started: displacement, velocity, acceleration, non-rigid part."""

    origin: np.ndarray
    last: np.ndarray
    last_t: float
    displacement: np.ndarray = field(default_factory=lambda: np.zeros(2))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    acceleration: np.ndarray = field(default_factory=lambda: np.zeros(2))
    nonrigid: np.ndarray = field(default_factory=lambda: np.zeros(2))
    rigid0: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """Rigid displacement of the field when this track started (its common reference)."""
    tail: deque[tuple[float, float]] = field(default_factory=deque)


@dataclass(frozen=True)
class KinematicsState:
    per_track: dict[int, TrackKinematics]
    """Tracks observed in this frame."""
    rigid: np.ndarray
    """Common (rigid) displacement since tracking started, (dy, dx) px."""
    nonrigid_rms: float
    nonrigid_max: float
    nonrigid_rate: float
    """Growth of ``nonrigid_rms`` per second over the last ``window`` frames (px/s); NaN until
    ``window`` frames spanning at least ``min_span_s`` have been seen."""


class Kinematics:
    """Displacements → rigid part (mean over the tracked particles) and non-rigid residuals.

    Velocities are exponentially smoothed (``alpha``) frame-to-frame steps over the detector
    time step; acceleration is the change of the smoothed velocity per second.
    """

    def __init__(self, window: int = 8, tail: int = 40, alpha: float = 0.5) -> None:
        self.window = window
        self.tail_len = tail
        self.alpha = alpha
        self.min_span_s = 1.0
        """The rate needs at least this much time in its window (a burst of frames is no trend)."""
        self._k: dict[int, TrackKinematics] = {}
        self._rigid = np.zeros(2)
        self._history: deque[tuple[float, float]] = deque(maxlen=max(window, 2))
        self._last_t: float | None = None

    def reset(self) -> None:
        self._k.clear()
        self._rigid = np.zeros(2)
        self._history.clear()
        self._last_t = None

    def tail(self, track_id: int) -> list[tuple[float, float]]:
        k = self._k.get(track_id)
        return list(k.tail) if k is not None else []

    def update(
        self, t: float, observed: list[Track], alive: list[Track], confident: list[bool] | None = None
    ) -> KinematicsState:
        """Rigid part = mean displacement of the tracked particles in a common reference (a track
        that starts late is referred to the rigid displacement at its start), so neither part
        accumulates per-frame registration noise; non-rigid = each particle's remainder.

        With ``confident``, only those particles (whole, well registered) make the rigid part
        and the non-rigid statistics; the others still get their residual."""
        from monitor.analysis.registration import decompose

        prev_t = self._last_t
        dt = t - prev_t if prev_t is not None and t > prev_t else 1.0
        self._last_t = t
        known = [self._k.get(tr.id) for tr in observed]
        glob = np.array(
            [
                tr.position - k.origin + k.rigid0 if k is not None else np.zeros(2)
                for tr, k in zip(observed, known, strict=True)
            ]
        ).reshape(-1, 2)
        valid = np.array([k is not None for k in known], bool)
        conf = np.ones(len(observed), bool) if confident is None else np.asarray(confident, bool)
        if (valid & conf).any():
            rigid, _ = decompose(glob, valid & conf)
            self._rigid = rigid
            resid = np.where(valid[:, None], glob - rigid[None, :], 0.0)
        elif valid.any():
            rigid, resid = decompose(glob, valid)
            self._rigid = rigid
        else:
            resid = np.zeros_like(glob)
        per: dict[int, TrackKinematics] = {}
        for i, (tr, k) in enumerate(zip(observed, known, strict=True)):
            if k is None:
                k = TrackKinematics(origin=tr.position.copy(), last=tr.position.copy(), last_t=t)
                k.rigid0 = self._rigid.copy()
                k.tail = deque(maxlen=self.tail_len)
                self._k[tr.id] = k
            else:
                if prev_t is not None and k.last_t == prev_t:
                    v = (tr.position - k.last) / dt
                    new_v = self.alpha * v + (1 - self.alpha) * k.velocity
                    k.acceleration = (new_v - k.velocity) / dt
                    k.velocity = new_v
                k.nonrigid = resid[i]
            k.last, k.last_t = tr.position.copy(), t
            k.displacement = tr.position - k.origin
            k.tail.append((float(tr.position[0]), float(tr.position[1])))
            per[tr.id] = k
        alive_ids = {tr.id for tr in alive}
        for tid in [tid for tid in self._k if tid not in alive_ids]:
            del self._k[tid]
        stat = [per[tr.id] for tr, c in zip(observed, conf, strict=True) if c and tr.id in per]
        mags = np.array([np.hypot(*k.nonrigid) for k in stat]) if stat else np.zeros(0)
        rms = float(np.sqrt(np.mean(mags**2))) if mags.size else float("nan")
        rate = float("nan")
        if np.isfinite(rms):
            self._history.append((t, rms))
            t0, r0 = self._history[0]
            if len(self._history) == self._history.maxlen and t - t0 >= self.min_span_s:
                rate = (rms - r0) / (t - t0)
        return KinematicsState(
            per, self._rigid.copy(), rms, float(mags.max()) if mags.size else float("nan"), rate
        )
