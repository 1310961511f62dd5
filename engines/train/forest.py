"""Pixel classifier of the kind ilastik users reach for: a random forest on multi-scale filter
features, exported as ONE ONNX graph (image in, class probabilities out) so it runs, tiles and
is served exactly like the networks (model kind ``forest`` in the manifest).

Features (:data:`FEATURES`, per pixel of the percentile-normalised slice): the intensity, and
for each σ in :data:`SIGMAS` the Gaussian-smoothed intensity, the gradient magnitude and the
two Hessian eigenvalues (as ``skimage.feature.multiscale_basic_features`` / ilastik), from
separable derivative-of-Gaussian convolutions (kernel radius 3σ, edge padding) inside the graph.
Training runs the same feature graph through ONNX Runtime, so training and inference features
are identical by construction. The forest (scikit-learn) is converted with skl2onnx
(``TreeEnsembleClassifier``) and joined to the feature graph; classes absent from training get
probability 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.tiling import TileSpec

log = logging.getLogger("engines.train.forest")

SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
FEATURES = (
    "intensity",
    *(f"{k}_s{s:g}" for s in SIGMAS for k in ("gauss", "gradient", "hess_hi", "hess_lo")),
)
OPSET = 17
ML_OPSET = 3
RADIUS = int(3 * max(SIGMAS))
FOREST_TILE = TileSpec(tile=1024, overlap=2 * RADIUS, margin=RADIUS, batch=1)
"""Margin = the receptive-field radius: tiled output equals whole-slice output exactly."""


@dataclass(frozen=True)
class ForestConfig:
    n_estimators: int = 48
    max_depth: int = 14
    min_samples_leaf: int = 3
    max_pixels: int = 200_000
    """Labelled pixels sampled for training (class-balanced: at most max_pixels / classes each)."""
    seed: int = 0
    threads: int = 2


def _kernels(sigma: float) -> np.ndarray:
    """(3, 2r+1), r = ceil(3σ): Gaussian, first and second derivative of Gaussian."""
    r = int(np.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    d1 = -x / sigma**2 * g
    d2 = (x**2 / sigma**4 - 1 / sigma**2) * g
    d2 -= d2.mean()  # zero response to a constant
    return np.stack([g, d1, d2]).astype(np.float32)


# Per sigma the x pass makes (g, g, g, d1, d1, d2) and the depthwise y pass applies
# (g, d1, d2, g, d1, g): G, Gy, Gyy, Gx, Gxy, Gxx — separable, each output from one input.
X_KERNELS = (0, 0, 0, 1, 1, 2)
Y_KERNELS = (0, 1, 2, 0, 1, 0)


def feature_graph_nodes(inp: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``out`` (B, F, H, W) from ``inp`` (B, 1, H, W)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inits.append(numpy_helper.from_array(np.ones(6, np.int64), "fsplit"))
    for i, sigma in enumerate(SIGMAS):
        ker = _kernels(sigma)
        k = ker.shape[1]
        r = k // 2
        wx = np.stack([ker[c] for c in X_KERNELS])[:, None, None, :]  # (6, 1, 1, k)
        wy = np.stack([ker[c] for c in Y_KERNELS])[:, None, :, None]  # (6, 1, k, 1), depthwise
        pads = np.array([0, 0, r, r, 0, 0, r, r], np.int64)
        inits += [
            numpy_helper.from_array(pads, f"fpads{i}"),
            numpy_helper.from_array(wx.astype(np.float32), f"fwx{i}"),
            numpy_helper.from_array(wy.astype(np.float32), f"fwy{i}"),
        ]
        nodes += [
            helper.make_node("Pad", [inp, f"fpads{i}"], [f"fpad{i}"], mode="edge"),
            helper.make_node("Conv", [f"fpad{i}", f"fwx{i}"], [f"fcx{i}"]),
            helper.make_node("Conv", [f"fcx{i}", f"fwy{i}"], [f"fcy{i}"], group=6),
            helper.make_node("Split", [f"fcy{i}", "fsplit"], [f"f{i}_{j}" for j in range(6)], axis=1),
        ]
    feats = [inp]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "fhalf")
    inits.append(half)
    for i in range(len(SIGMAS)):
        g, gy, gyy, gx, gxy, gxx = (f"f{i}_{j}" for j in range(6))
        p = f"s{i}_"
        nodes += [
            helper.make_node("Mul", [gx, gx], [p + "gx2"]),
            helper.make_node("Mul", [gy, gy], [p + "gy2"]),
            helper.make_node("Add", [p + "gx2", p + "gy2"], [p + "g2"]),
            helper.make_node("Sqrt", [p + "g2"], [p + "grad"]),
            helper.make_node("Add", [gxx, gyy], [p + "tr"]),
            helper.make_node("Mul", [p + "tr", "fhalf"], [p + "mean"]),
            helper.make_node("Sub", [gxx, gyy], [p + "df"]),
            helper.make_node("Mul", [p + "df", "fhalf"], [p + "hd"]),
            helper.make_node("Mul", [p + "hd", p + "hd"], [p + "hd2"]),
            helper.make_node("Mul", [gxy, gxy], [p + "xy2"]),
            helper.make_node("Add", [p + "hd2", p + "xy2"], [p + "disc"]),
            helper.make_node("Sqrt", [p + "disc"], [p + "root"]),
            helper.make_node("Add", [p + "mean", p + "root"], [p + "hi"]),
            helper.make_node("Sub", [p + "mean", p + "root"], [p + "lo"]),
        ]
        feats += [g, p + "grad", p + "hi", p + "lo"]
    nodes.append(helper.make_node("Concat", feats, [out], axis=1))
    return nodes, inits


def feature_model() -> onnx.ModelProto:
    nodes, inits = feature_graph_nodes("image", "features")
    graph = helper.make_graph(
        nodes,
        "forest_features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, ["batch", len(FEATURES), "height", "width"]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class FeatureExtractor:
    """Runs the feature graph (ONNX Runtime) on whole normalised slices: ``(F, H, W)``."""

    def __init__(self, threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            feature_model().SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x[None, None], np.float32)})[0][0]


def sample_pixels(
    labels: Sequence[np.ndarray], n_classes: int, max_pixels: int, seed: int
) -> list[np.ndarray]:
    """Per slice, flat indices of labelled pixels (ids < n_classes) to train on (class-balanced,
    seeded); other values (the ignore label) are never sampled."""
    rng = np.random.default_rng(seed)
    present = sum(1 for c in range(n_classes) if any(np.any(lab == c) for lab in labels))
    per_class = max(1, max_pixels // max(present, 1))
    chosen: list[list[np.ndarray]] = [[] for _ in labels]
    for c in range(n_classes):
        where = [np.flatnonzero(lab.ravel() == c) for lab in labels]
        total = sum(w.size for w in where)
        if total == 0:
            continue
        frac = min(1.0, per_class / total)
        for i, w in enumerate(where):
            if w.size:
                k = max(1, int(round(w.size * frac)))
                chosen[i].append(rng.choice(w, size=min(k, w.size), replace=False))
    return [np.concatenate(c) if c else np.zeros(0, np.int64) for c in chosen]


def train_forest(
    features: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int, cfg: ForestConfig
) -> object:
    """A fitted ``RandomForestClassifier`` on sampled labelled pixels of ``(F, H, W)`` features."""
    from sklearn.ensemble import RandomForestClassifier

    idx = sample_pixels(labels, n_classes, cfg.max_pixels, cfg.seed)
    xs = [f.reshape(f.shape[0], -1)[:, i].T for f, i in zip(features, idx, strict=True)]
    ys = [lab.ravel()[i] for lab, i in zip(labels, idx, strict=True)]
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.shape[0] == 0:
        raise ValueError("no labelled pixels to train the forest on")
    clf = RandomForestClassifier(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        min_samples_leaf=cfg.min_samples_leaf,
        n_jobs=cfg.threads,
        random_state=cfg.seed,
    )
    clf.fit(x, y)
    log.info("forest: %d pixels, %d features, classes %s", x.shape[0], x.shape[1], list(clf.classes_))
    return clf


def forest_probs(clf: object, feats: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, H, W) probabilities from scikit-learn directly (for validation during training)."""
    f = feats.reshape(feats.shape[0], -1).T
    p = clf.predict_proba(f)  # type: ignore[attr-defined]
    out = np.zeros((n_classes, f.shape[0]), np.float32)
    out[np.asarray(clf.classes_, np.intp)] = p.T  # type: ignore[attr-defined]
    return out.reshape(n_classes, *feats.shape[1:])


def export_forest_onnx(clf: object, n_classes: int, path: Path) -> Path:
    """One ONNX graph: ``image (B,1,H,W)`` → ``probs (B,C,H,W)`` (features + forest)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    fm = convert_sklearn(
        clf,
        initial_types=[("X", FloatTensorType([None, len(FEATURES)]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    prob_name = fm.graph.output[1].name
    nodes, inits = feature_graph_nodes("image", "features")
    present = np.asarray(clf.classes_, np.intp)  # type: ignore[attr-defined]
    onehot = np.zeros((present.size, n_classes), np.float32)
    onehot[np.arange(present.size), present] = 1.0
    inits += [
        numpy_helper.from_array(onehot, "class_map"),
        numpy_helper.from_array(np.array([-1, len(FEATURES)], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([0, 2, 3], np.int64), "bhw_idx"),
        numpy_helper.from_array(np.array([n_classes], np.int64), "n_cls"),
    ]
    nodes += [
        helper.make_node("Transpose", ["features"], ["feat_bhwf"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["feat_bhwf", "flat_shape"], ["X"]),
    ]
    nodes += list(fm.graph.node)
    inits += list(fm.graph.initializer)
    nodes += [
        helper.make_node("MatMul", [prob_name, "class_map"], ["probs_flat"]),
        helper.make_node("Shape", ["image"], ["img_shape"]),
        helper.make_node("Gather", ["img_shape", "bhw_idx"], ["bhw"], axis=0),
        helper.make_node("Concat", ["bhw", "n_cls"], ["bhwc"], axis=0),
        helper.make_node("Reshape", ["probs_flat", "bhwc"], ["probs_bhwc"]),
        helper.make_node("Transpose", ["probs_bhwc"], ["probs"], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "forest_segmentation",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_classes, "height", "width"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    )
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def check_export(path: Path, clf: object, x: np.ndarray, n_classes: int, threads: int = 2) -> float:
    """Max |ONNX − (feature graph + scikit-learn)| on one slice (must be tiny)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x[None, None].astype(np.float32)})[0][0]
    want = forest_probs(clf, FeatureExtractor(threads)(x), n_classes)
    return float(np.abs(got - want).max())
