"""Tracker: Hungarian assignment, SSIM confirmation, lost and found; kinematics."""

from __future__ import annotations

import numpy as np

from monitor.analysis.tracking import Kinematics, Tracker, ssim, ssim_batch, thumbnail, thumbnails


def thumbs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((16, 16)).astype(np.float32) for _ in range(n)]


def test_assignment_follows_particles_in_any_order() -> None:
    tr = Tracker(max_tracks=8)
    pts = np.array([[10.0, 10.0], [50.0, 50.0], [10.0, 80.0]])
    th = thumbs(3)
    first = tr.update(pts, th)
    ids = [t.id for t in first.assignment]
    order = [2, 0, 1]
    second = tr.update(pts[order] + 1.5, [th[i] for i in order])
    assert [t.id for t in second.assignment] == [ids[i] for i in order]
    assert not second.lost and not second.started
    assert {t.slot for t in tr.tracks} == {0, 1, 2}


def test_lost_and_found() -> None:
    tr = Tracker(max_tracks=4, max_missing=3)
    pts = np.array([[10.0, 10.0], [60.0, 60.0]])
    th = thumbs(2)
    tr.update(pts, th)
    upd = tr.update(pts[:1], th[:1])
    assert len(upd.lost) == 1 and tr.missing_now == 1 and tr.lost_total == 1
    upd = tr.update(pts, th)
    assert len(upd.found) == 1 and tr.found_total == 1 and tr.missing_now == 0
    for _ in range(5):
        upd = tr.update(pts[:1], th[:1])
    assert len(tr.tracks) == 1  # dropped after max_missing frames


def test_far_jump_needs_a_similar_look() -> None:
    tr = Tracker(max_tracks=4, confirm_px=5.0, gate_px=40.0, min_ssim=0.5)
    a = thumbs(1, 1)[0]
    tr.update(np.array([[30.0, 30.0]]), [a])
    other = thumbs(1, 2)[0]
    upd = tr.update(np.array([[30.0, 50.0]]), [other])  # 20 px away, different particle
    assert upd.started and upd.lost
    tr2 = Tracker(max_tracks=4, confirm_px=5.0, gate_px=40.0, min_ssim=0.5)
    tr2.update(np.array([[30.0, 30.0]]), [a])
    upd = tr2.update(np.array([[30.0, 50.0]]), [a])  # same look: accepted
    assert not upd.started and not upd.lost


def test_kinematics_rigid_and_nonrigid() -> None:
    tr = Tracker()
    kin = Kinematics(window=4)
    pts = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    th = thumbs(3)
    for i in range(6):
        moved = pts + np.array([1.0, 0.5]) * i  # common drift
        moved[2] += np.array([0.0, 0.3]) * i  # one particle deforms
        upd = tr.update(moved, th)
        state = kin.update(float(i) * 0.5, [t for t in upd.assignment if t is not None], tr.tracks)
    assert np.allclose(state.rigid, np.array([1.0, 0.5 + 0.1]) * 5, atol=1e-9)
    k = state.per_track[upd.assignment[2].id]
    assert np.allclose(k.displacement, [5.0, 4.0])
    assert np.allclose(k.velocity, [2.0, 1.6], atol=0.1)  # px per second (0.5 s frames)
    assert state.nonrigid_max > 0.9 and state.nonrigid_rate > 0


def test_batched_ssim_and_thumbnails_match_the_single_versions() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((4, 24, 24)).astype(np.float32)
    b = (a + 0.4 * rng.random((4, 24, 24))).astype(np.float32)
    b[3] = 2.0  # flat against textured
    assert np.allclose(ssim_batch(a, b), [ssim(x, y) for x, y in zip(a, b, strict=True)], atol=1e-6)
    assert ssim_batch(np.ones((1, 24, 24)), np.ones((1, 24, 24)))[0] == 1.0
    img = rng.random((60, 50)).astype(np.float32)
    centres = np.array([[0.4, 0.0], [30.6, 25.2], [59.0, 49.0]])
    for c, t in zip(centres, thumbnails(img, centres, 24), strict=True):
        assert np.array_equal(t, thumbnail(img, (c[0], c[1]), 24))
