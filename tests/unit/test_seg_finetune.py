"""finetune segmentation pieces: labels people have (PNG/TIFF, class map, ignore, any size, one-line
errors), the seeded split, the forest as one ONNX graph (equal to scikit-learn; tiled equals
whole-slice), and a small end-to-end run of both methods with test metrics and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engines.registry import load_manifest
from engines.runtime import create_runner
from engines.synth.xct import CLASSES, make_slice
from engines.tiling import full_predict, normalise_slice, tiled_predict
from engines.train.forest import (
    FOREST_TILE,
    FeatureExtractor,
    ForestConfig,
    check_export,
    export_forest_onnx,
    train_forest,
)
from engines.train.seg_finetune_net import split_slices
from engines.train.seg_labels import IGNORE, FinetuneDataError, load_labelled, parse_class_map
from engines.train.segmentation_finetune import finetune


def binary_pair(d: Path, name: str, shape: tuple[int, int], seed: int, scribble: bool = False) -> None:
    img, lab = make_slice(shape, seed)
    tifffile.imwrite(d / f"{name}_image.tif", (img * 1000 + 500).astype(np.uint16))
    m = np.where(lab == 0, 255, 0).astype(np.uint8)
    if scribble:  # sparse labels: only every 7th row is labelled, the rest 128
        keep = np.zeros(shape, bool)
        keep[::7] = True
        m = np.where(keep, m, 128).astype(np.uint8)
    Image.fromarray(m).save(d / f"{name}_mask.png")


def test_class_map_parsing() -> None:
    assert parse_class_map("255=electrode,0=electrolyte", CLASSES) == {255: 0, 0: 1}
    assert parse_class_map("3=2", CLASSES) == {3: 2}
    assert parse_class_map(None, CLASSES) is None
    for bad in ("255", "x=electrode", "1=anode"):
        with pytest.raises(FinetuneDataError, match="--class-map"):
            parse_class_map(bad, CLASSES)


def test_png_masks_class_map_ignore_and_any_size(tmp_path: Path) -> None:
    binary_pair(tmp_path, "a", (150, 230), 11, scribble=True)
    binary_pair(tmp_path, "b", (260, 140), 12)
    cmap = parse_class_map("255=electrode,0=electrolyte", CLASSES)
    with pytest.raises(FinetuneDataError) as err:
        load_labelled(tmp_path, len(CLASSES), cmap)
    msg = str(err.value)
    assert "a_mask.png" in msg and "0, 128, 255" in msg and "\n" not in msg  # one line, file + values
    sl = load_labelled(tmp_path, len(CLASSES), cmap, ignore=128)
    assert [s.image.shape for s in sl] == [(150, 230), (260, 140)]  # never cropped
    a = sl[0].mask
    assert set(np.unique(a)) == {0, 1, IGNORE} and (a[1::7] == IGNORE).all() and (a[::7] != IGNORE).all()
    with pytest.raises(
        FinetuneDataError, match=r"a_mask.png: mask values \{0, 128, 255\}; \[255\] not mapped"
    ):
        load_labelled(tmp_path, len(CLASSES), None, ignore=128)


def test_images_and_masks_directories_and_missing_mask(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img, lab = make_slice((96, 96), 3)
    tifffile.imwrite(tmp_path / "images" / "s1.tif", img)
    tifffile.imwrite(tmp_path / "masks" / "s1.tif", lab)
    assert len(load_labelled(tmp_path, len(CLASSES))) == 1
    tifffile.imwrite(tmp_path / "images" / "s2.tif", img)
    with pytest.raises(FinetuneDataError, match="s2.tif: no mask"):
        load_labelled(tmp_path, len(CLASSES))


def test_split_by_blocks_hides_labels_and_by_slice(tmp_path: Path) -> None:
    binary_pair(tmp_path, "a", (200, 200), 5)
    sl = load_labelled(tmp_path, len(CLASSES), parse_class_map("255=0,0=1", CLASSES))
    sp = split_slices(sl, seed=3)
    lab = [s.mask != IGNORE for s in (sp.train[0], sp.val[0], sp.test[0])]
    assert all(m.any() for m in lab) and not (lab[0] & lab[1]).any() and not (lab[1] & lab[2]).any()
    assert (lab[0] | lab[1] | lab[2]).all() and "blocks" in sp.how
    sp2 = split_slices(sl * 6, seed=3)
    assert (len(sp2.train), len(sp2.val), len(sp2.test)) == (2, 1, 1) or sum(
        map(len, (sp2.train, sp2.val, sp2.test))
    ) == 6


def test_forest_onnx_equals_sklearn_and_tiles_equal_whole(tmp_path: Path) -> None:
    img, lab = make_slice((160, 200), 21)
    x = normalise_slice(img)
    clf = train_forest(
        [FeatureExtractor()(x)], [lab], len(CLASSES), ForestConfig(n_estimators=4, max_depth=6)
    )
    path = export_forest_onnx(clf, len(CLASSES), tmp_path / "f.onnx")
    assert check_export(path, clf, x, len(CLASSES)) < 1e-5
    big, _ = make_slice((1100, 1080), 22)
    xb = normalise_slice(big)
    with create_runner(path, "onnxruntime", threads=2) as r:

        def pred(b: np.ndarray) -> np.ndarray:
            return r.infer({"image": b})["probs"]

        whole = full_predict(xb, pred, 1)
        tiled = tiled_predict(xb, pred, FOREST_TILE)
    assert whole.shape == (5, 1100, 1080) and np.abs(whole - tiled).max() < 1e-4


@pytest.mark.timeout(600)
def test_finetune_auto_writes_manifest_with_provenance(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    binary_pair(data, "a", (192, 256), 31)
    out = tmp_path / "out"
    s = finetune(
        data, out, method="auto", class_map="255=electrode,0=electrolyte", steps=4, seed=1,
        forest=ForestConfig(n_estimators=6, max_depth=8, max_pixels=6000, seed=1),
    )  # fmt: skip
    assert s["method"] in ("network", "forest") and set(s["validation"]) == {"network", "forest"}
    m = load_manifest("xct_finetuned", out)  # verifies sha256
    assert m.version.startswith("ft-") and m.training["method"] == s["method"]
    assert m.training["data"]["files"][0]["sha256"] and "blocks" in m.training["split"]
    assert set(m.metrics) >= {"mIoU", "IoU_electrode", "IoU_electrolyte"} and "IoU_pit" not in m.metrics
    assert m.extra["ood"]["n_samples"] >= 2 and m.extra["kind"] == s["method"]
    assert "synthetic" not in json.dumps(m.training["data"])
    s2 = finetune(
        data, tmp_path / "out2", method="forest", class_map="255=electrode,0=electrolyte", seed=1,
        forest=ForestConfig(n_estimators=6, max_depth=8, max_pixels=6000, seed=1),
    )  # fmt: skip
    m2 = load_manifest("xct_finetuned", tmp_path / "out2")
    assert s2["method"] == "forest" and m2.extra["kind"] == "forest" and m2.extra["fully_convolutional"]
    s3 = finetune(
        data, tmp_path / "out3", method="forest", class_map="255=electrode,0=electrolyte", seed=1,
        forest=ForestConfig(n_estimators=6, max_depth=8, max_pixels=6000, seed=1),
    )  # fmt: skip
    assert s3["test"] == s2["test"]  # seeded: the same run twice gives the same model


def test_replay_and_segment_cli_take_a_finetuned_model(tmp_path: Path) -> None:
    from monitor.cli import build_parser
    from monitor.offline import replay_config

    cfg = replay_config(
        tmp_path / "in.tif", "segmentation", tmp_path / "o.h5", None, model="xct_finetuned", weights_dir="W"
    )
    assert (cfg.pipelines[0].model, cfg.pipelines[0].weights_dir) == ("xct_finetuned", "W")
    a = build_parser().parse_args(
        ["segment", "x.tif", "--weights-dir", "W", "--model", "m", "--out", "o.tif"]
    )
    assert (a.weights_dir, a.model, a.out) == ("W", "m", "o.tif")
    a = build_parser().parse_args(["replay", "x.tif", "--pipeline", "segmentation", "--out", "o.h5",
                                   "--weights-dir", "W"])  # fmt: skip
    assert a.weights_dir == "W" and a.model is None


def test_segment_cli_writes_full_resolution_mask(tmp_path: Path) -> None:
    from monitor.cli import main

    img, _ = make_slice((150, 210), 77)
    tifffile.imwrite(tmp_path / "s.tif", (img * 1000 + 500).astype(np.uint16))
    assert main(["segment", str(tmp_path / "s.tif"), "--out", str(tmp_path / "m.tif")]) == 0
    m = tifffile.imread(tmp_path / "m.tif")
    assert m.shape == (150, 210) and m.dtype == np.uint8 and m.max() < 5


def test_forest_features_are_gaussian_derivatives() -> None:
    from scipy import ndimage

    from engines.train.forest import FEATURES

    x = normalise_slice(make_slice((160, 180), 41)[0])
    f = FeatureExtractor(1)(x)
    for s in (1, 4, 16):
        g = ndimage.gaussian_filter(x, s, mode="nearest", truncate=3.0)
        gx = ndimage.gaussian_filter(x, s, order=(0, 1), mode="nearest", truncate=3.0)
        gy = ndimage.gaussian_filter(x, s, order=(1, 0), mode="nearest", truncate=3.0)
        assert np.abs(f[FEATURES.index(f"gauss_s{s}")] - g).max() < 1e-5
        assert np.abs(f[FEATURES.index(f"gradient_s{s}")] - np.hypot(gx, gy)).max() < 1e-5
    hi, lo = f[FEATURES.index("hess_hi_s4")], f[FEATURES.index("hess_lo_s4")]
    assert (hi >= lo).all()
