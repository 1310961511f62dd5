from __future__ import annotations

import numpy as np
import pytest

from monitor.live import MAX_DISPLAY_PX, display_image


@pytest.mark.parametrize("shape", [(2050, 2047), (512, 512), (100, 700), (37, 5)])
def test_display_image_is_the_block_mean(shape: tuple[int, int]) -> None:
    a = np.random.default_rng(0).integers(0, 4000, size=shape, dtype=np.uint16)
    d = display_image(a)
    fy = max(1, -(-shape[0] // MAX_DISPLAY_PX))
    fx = max(1, -(-shape[1] // MAX_DISPLAY_PX))
    ny, nx = shape[0] // fy, shape[1] // fx
    ref = a[: ny * fy, : nx * fx].astype(np.float64).reshape(ny, fy, nx, fx).mean(axis=(1, 3))
    assert d.dtype == np.float32 and d.shape == (ny, nx)
    assert max(d.shape) <= MAX_DISPLAY_PX
    np.testing.assert_allclose(d, ref, rtol=1e-5)
