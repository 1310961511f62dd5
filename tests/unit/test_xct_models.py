"""Model shapes, the ensemble and the paper's losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.models.ensemble import Ensemble, search_weights, weight_grid
from engines.models.transforcnn import TransforCNN
from engines.models.unet import UNet, build_unet
from engines.train.losses import LOSSES, get_loss, tversky_index


@pytest.mark.parametrize(
    "kw",
    [
        {"base": 16, "depth": 5},
        {"base": 16, "depth": 3, "space_to_depth": 4},
        {"base": 8, "depth": 4, "space_to_depth": 2},
    ],
)
def test_unet_is_fully_convolutional(kw: dict[str, int]) -> None:
    m = UNet(n_classes=5, **kw).eval()
    for side in (m.multiple * 2, m.multiple * 5):
        with torch.no_grad():
            out = m(torch.zeros(2, 1, side, side + m.multiple))
        assert out.shape == (2, 5, side, side + m.multiple)


def test_paper_unet_shape() -> None:
    m = UNet(base=16, depth=5)
    widths = [blk[0].out_channels for blk in m.down]
    assert widths == [16, 32, 64, 128, 256]
    p = build_unet(base=16, depth=3, space_to_depth=4).eval()
    with torch.no_grad():
        probs = p(torch.randn(1, 1, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64))


def test_transforcnn_structure() -> None:
    m = TransforCNN().eval()
    assert len(m.units) == 8 and m.taps == (1, 3, 5, 7)  # every second unit is tapped
    assert m.embed.kernel_size == (16, 16) and m.embed.out_channels == 64
    with torch.no_grad():
        out = m(torch.randn(3, 1, 128, 128))
    assert out.shape == (3, 5, 128, 128)


def test_ensemble_is_the_weighted_mean_of_member_probabilities() -> None:
    torch.manual_seed(0)
    a, b = UNet(base=4, depth=2).eval(), UNet(base=4, depth=2).eval()
    ens = Ensemble([a, b], [3.0, 1.0]).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expect = 0.75 * torch.softmax(a(x), 1) + 0.25 * torch.softmax(b(x), 1)
        torch.testing.assert_close(ens(x), expect)


def test_weight_search_finds_the_better_member() -> None:
    assert len(weight_grid(2, 0.1)) == 11 and all(abs(sum(w) - 1) < 1e-9 for w in weight_grid(3, 0.25))
    truth = np.random.default_rng(0).integers(0, 2, 1000)
    good = np.eye(2)[truth].T * 0.8 + 0.1
    bad = np.eye(2)[1 - truth].T * 0.8 + 0.1
    w, s = search_weights([bad, good], lambda p: float((p.argmax(0) == truth).mean()))
    assert w[1] > w[0] and s == 1.0


@pytest.mark.parametrize("name", LOSSES)
def test_losses_prefer_the_right_answer(name: str) -> None:
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 5, (2, 32, 32)))
    right = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float() * 8
    wrong = torch.roll(right, 1, dims=1)
    fn = get_loss(name)
    assert float(fn(right, labels)) < float(fn(torch.zeros_like(right), labels)) < float(fn(wrong, labels))
    assert torch.allclose(tversky_index(right * 10, labels), torch.ones(5), atol=1e-3)
    with pytest.raises(ValueError):
        get_loss("dice-ish")
