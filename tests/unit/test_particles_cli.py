"""`operando-monitor particles` and the replay options of issue 13 (real files, real CLI)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from engines.synth.txm_real import real_like, real_stack
from monitor.cli import main
from monitor.errors import MonitorError, SourceError
from monitor.offline import parse_option_args
from monitor.sources.replay import load_energies


def test_particles_writes_uint16_labels_and_prints_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(250_000)
    frame = real_like(rng, (400, 520), 70.0, contrast="absorbance")
    img = tmp_path / "slice.tif"
    tifffile.imwrite(img, frame.image)
    out = tmp_path / "labels.tif"
    assert main(["particles", str(img), "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint16 and labels.shape == frame.image.shape
    printed = capsys.readouterr().out
    n = int(labels.max())
    assert f"{n} particles" in printed and "contrast absorbance [auto]" in printed
    big = np.bincount(frame.labels.ravel())[1:] > 800
    assert n >= 0.5 * big.sum()
    # HDF5 input and forced options
    h5 = tmp_path / "slice.h5"
    with h5py.File(h5, "w") as f:
        f["/entry/data/data"] = frame.image[None]
    out2 = tmp_path / "labels2.tif"
    args = ["particles", str(h5), "--dataset", "/entry/data/data", "--contrast", "absorbance"]
    assert main([*args, "--particle-diameter", "70", "--out", str(out2)]) == 0
    assert "[option]" in capsys.readouterr().out and tifffile.imread(out2).max() > 0


def test_particles_on_an_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "x.tif"
    bad.write_bytes(b"not a tiff")
    assert main(["particles", str(bad), "--out", str(tmp_path / "o.tif")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_option_values_are_typed_like_toml() -> None:
    opts = parse_option_args(["detect_every=2", "min_ssim=0.4", "xanes=false", "contrast=absorbance"])
    assert opts == {"detect_every": 2, "min_ssim": 0.4, "xanes": False, "contrast": "absorbance"}
    with pytest.raises(MonitorError, match="KEY=VALUE"):
        parse_option_args(["detect_every"])


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    st = real_stack(250_001, frames=6)
    path = tmp_path_factory.mktemp("replay") / "stack.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", data=st.frames)
        ds.attrs["energy_eV"] = np.linspace(8330.0, 8360.0, 6)
    return path


def test_replay_takes_options_energies_and_prints_frames_per_second(
    stack_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.h5"
    args = ["replay", str(stack_file), "--pipeline", "alignment", "--out", str(out), "--no-progress"]
    assert main([*args, "--option", "detect_every=2", "--option", "contrast=auto"]) == 0
    assert "frames/s" in capsys.readouterr().out
    with h5py.File(out) as f:
        res = f["/entry/alignment/results"][:]
        assert np.allclose(res["energy_eV"], np.linspace(8330.0, 8360.0, 6))
        assert res["detected"][0] == 1 and res["detected"][1] == 0  # detect_every=2 took effect
        for name in ("centroid", "track_id", "displacement"):
            assert name in f["/entry/alignment"]
    energies = tmp_path / "e.txt"
    energies.write_text("\n".join(str(8300 + i) for i in range(6)))
    assert main([*args, "--overwrite", "--energies", str(energies)]) == 0
    with h5py.File(out) as f:
        assert list(f["/entry/alignment/results"]["energy_eV"]) == [8300.0 + i for i in range(6)]


def test_replay_rejects_an_unknown_option_naming_it_before_writing(
    stack_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.h5"
    args = ["replay", str(stack_file), "--pipeline", "alignment", "--out", str(out), "--no-progress"]
    assert main([*args, "--option", "detect_evrey=2"]) == 2
    assert "pipelines.alignment.options.detect_evrey" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--option", "contrast=upside-down"]) == 2
    assert "contrast" in capsys.readouterr().err


def test_energies_of_the_wrong_length_are_a_source_error(stack_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "e.txt"
    bad.write_text("8330 8331")
    with pytest.raises(SourceError, match="2 energies for 6 frames"):
        load_energies(stack_file, None, str(bad), 6)
    assert load_energies(stack_file, None, "", 6) is not None
