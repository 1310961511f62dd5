"""Model manifests: what a shipped model expects and how it was made, verified by sha256.

One JSON manifest per model sits next to its ONNX file in ``engines/weights/``::

    engines/weights/<name>.json   name, version, task, inputs/outputs, normalisation,
                                  training (command, seed, config), metrics, onnx, sha256, extra
    engines/weights/<name>.onnx
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines.errors import EngineError, ModelCorrupt, ModelNotFound

log = logging.getLogger("engines.registry")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; ``str`` dimensions are dynamic (``"batch"``, ``"height"``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def matches(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(isinstance(want, str) or want == got for want, got in zip(self.shape, shape, strict=True))

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TensorSpec:
        shape = data["shape"]
        if not isinstance(shape, list):
            raise TypeError("shape must be a list")
        return cls(
            name=str(data["name"]),
            shape=tuple(d if isinstance(d, str) else int(d) for d in shape),
            dtype=str(data.get("dtype", "float32")),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    normalisation: dict[str, float]
    """What callers do to raw pixels before ``infer`` (documented per model)."""
    training: dict[str, object]
    """``command``, ``seed``, ``config`` and anything else needed to reproduce the weights."""
    metrics: dict[str, float]
    """Metrics on held-out synthetic data (seeds never used in training)."""
    onnx: str
    sha256: str
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["manifest_version"] = MANIFEST_VERSION
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=str(data["task"]),
                inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
                normalisation={str(k): float(v) for k, v in data.get("normalisation", {}).items()},
                training=dict(data.get("training", {})),
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
                onnx=str(data["onnx"]),
                sha256=str(data["sha256"]),
                extra=dict(data.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelCorrupt(f"{origin}: not a valid model manifest ({type(exc).__name__}: {exc})") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dir(weights_dir: Path | str | None) -> Path:
    return WEIGHTS_DIR if weights_dir is None or str(weights_dir) == "" else Path(weights_dir)


def save_model(
    onnx_path: Path | str,
    *,
    name: str,
    version: str,
    task: str,
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
    normalisation: Mapping[str, float],
    training: Mapping[str, object],
    metrics: Mapping[str, float],
    extra: Mapping[str, object] | None = None,
    out_dir: Path | str | None = None,
    torch_module: object | None = None,
    torch_factory: str = "",
    torch_kwargs: Mapping[str, object] | None = None,
) -> Manifest:
    """Copy the ONNX file to ``out_dir/<name>.onnx`` and write ``out_dir/<name>.json``.

    With ``torch_module`` and ``torch_factory`` (``"module:callable"`` rebuilding it from
    ``torch_kwargs``) the state dict is saved as ``<name>.pt`` too, so the torch backend can run it.
    """
    src = Path(onnx_path)
    if not src.is_file():
        raise ModelNotFound(f"no ONNX file at {src}")
    dest_dir = _dir(out_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.onnx"
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    extra = dict(extra or {})
    if torch_module is not None:
        import torch

        if not torch_factory:
            raise ValueError("save_model: torch_module needs torch_factory ('module:callable')")
        pt = dest_dir / f"{name}.pt"
        torch.save(torch_module.state_dict(), pt)  # type: ignore[attr-defined]
        extra["torch"] = {
            "factory": torch_factory,
            "kwargs": dict(torch_kwargs or {}),
            "state_dict": pt.name,
            "sha256": sha256_file(pt),
        }
    manifest = Manifest(
        name=name,
        version=version,
        task=task,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        normalisation={k: float(v) for k, v in normalisation.items()},
        training=dict(training),
        metrics={k: float(v) for k, v in metrics.items()},
        onnx=dest.name,
        sha256=sha256_file(dest),
        extra=extra,
    )
    tmp = dest_dir / f".{name}.json.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(dest_dir / f"{name}.json")
    return manifest


def load_manifest(name: str, weights_dir: Path | str | None = None, verify: bool = True) -> Manifest:
    """Read ``<name>.json`` and (by default) check the ONNX file's sha256 against it."""
    d = _dir(weights_dir)
    path = d / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in d.glob("*.json"))) or "none"
        raise ModelNotFound(f"no manifest for model {name!r} in {d} (available: {known})")
    manifest = Manifest.from_json(path.read_text(encoding="utf-8"), origin=str(path))
    if verify:
        verify_model(manifest, d)
    return manifest


def onnx_path(manifest: Manifest, weights_dir: Path | str | None = None) -> Path:
    return _dir(weights_dir) / manifest.onnx


def verify_model(manifest: Manifest, weights_dir: Path | str | None = None) -> Path:
    path = onnx_path(manifest, weights_dir)
    if not path.is_file():
        raise ModelNotFound(f"model {manifest.name!r}: ONNX file {path} is missing")
    digest = sha256_file(path)
    if digest != manifest.sha256:
        raise ModelCorrupt(
            f"model {manifest.name!r}: {path} has sha256 {digest[:12]}…, manifest says "
            f"{manifest.sha256[:12]}… (file corrupt or replaced; re-run the training command "
            f"{manifest.training.get('command', '?')!r})"
        )
    return path


def list_models(weights_dir: Path | str | None = None) -> list[Manifest]:
    """Every manifest in the directory (not verified; use ``load_manifest`` to verify)."""
    d = _dir(weights_dir)
    return [Manifest.from_json(p.read_text(encoding="utf-8"), str(p)) for p in sorted(d.glob("*.json"))]


INT8_SUFFIX = "_int8"
"""``<model>_int8.onnx`` / ``.json``: the int8 sibling written by ``operando-monitor quantize``."""


def int8_manifest_for(m: Manifest, weights_dir: Path | str | None = None) -> Manifest | None:
    """The accepted int8 sibling of fp32 manifest ``m`` (checked), or ``None``."""
    d = Path(weights_dir) if weights_dir not in (None, "") else WEIGHTS_DIR
    path = d / f"{m.name}{INT8_SUFFIX}.json"
    if not path.is_file():
        return None
    try:
        q = load_manifest(path.stem, d)
    except EngineError as exc:
        log.warning("model %s: int8 model not usable: %s", m.name, exc)
        return None
    if q.extra.get("fp32_sha256") != m.sha256:
        log.warning(
            "model %s: %s was quantised from another fp32 model (re-run `operando-monitor quantize %s`); "
            "using fp32",
            m.name,
            path.name,
            m.name,
        )
        return None
    return q
