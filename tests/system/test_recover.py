"""`operando-monitor recover FILE` (issue 12, failure 7): after kill -9 the run file opens with
plain ``h5py.File(path, "r")`` and keeps every committed row."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from monitor.cli import main
from monitor.store import status_flags
from tests.system.test_store_crash import BATCH, check_intact, kill, start_writer, wait_for_lines


def test_recover_makes_a_killed_run_file_open_with_plain_h5py(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, path = start_writer(tmp_path, "sleep", batches=4)
    try:
        flushed = wait_for_lines(proc, 4)
    finally:
        kill(proc)
    assert status_flags(path) != 0
    with pytest.raises(OSError):
        h5py.File(path, "r")  # what a user sees without recover
    assert main(["recover", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cleared" in out and f"frames {4 * BATCH}" in out
    with h5py.File(path, "r") as f:
        assert f["entry/frames"].shape[0] >= flushed * BATCH
    check_intact(path, flushed)
    assert main(["recover", str(path)]) == 0  # idempotent
    assert "nothing to clear" in capsys.readouterr().out


def test_recover_of_a_missing_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recover", str(tmp_path / "nope.h5")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
