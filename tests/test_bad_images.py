"""Images that fail to decode: validate rejects them, training names them or skips and counts them;
unexpected exceptions in the CLI: one line, the traceback in a file (or with --debug), exit code 3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from maskkit.data.synth import write_synthetic
from maskkit.errors import DataError, one_line


@pytest.fixture
def synth_truncated(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-image synthetic COCO dataset whose second image file is cut off midway (header intact)."""
    write_synthetic(tmp_path / "data", images=4, size=48, seed=1, workers=1)
    bad = sorted((tmp_path / "data" / "images").glob("*.png"))[1]
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    return tmp_path / "data", bad


def test_validate_rejects_truncated_image(synth_truncated: tuple[Path, Path]) -> None:
    from maskkit.data.splits import load_dataset
    from maskkit.data.validate import validate_dataset

    data, bad = synth_truncated
    report = validate_dataset(load_dataset(data).splits)
    hits = [f for f in report.findings if f.code == "E103"]
    assert [Path(f.file).name for f in hits] == [bad.name] and hits[0].severity == "error"
    assert report.exit_code == 1


def test_dataset_names_the_undecodable_image(synth_truncated: tuple[Path, Path]) -> None:
    from maskkit.data.dataset import InstanceDataset
    from maskkit.data.splits import load_dataset

    data, bad = synth_truncated
    aset = load_dataset(data).splits["train"]
    ds = InstanceDataset(aset)
    index = [r.file_name for r in aset.images].index(f"{bad.name}")
    with pytest.raises(DataError, match=bad.name):
        ds[index]


def test_worker_error_reaches_user_as_one_line() -> None:
    """torch re-raises a worker's DataError with the worker traceback in its message: one line is kept."""
    from torch._utils import ExceptionWrapper

    try:
        raise DataError("cannot read image (not a readable image)", file="images/b.png")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)
    assert one_line(info.value) == "images/b.png: cannot read image (not a readable image)"


def test_skip_bad_images_drops_and_counts(synth_truncated: tuple[Path, Path]) -> None:
    from maskkit.config import TrainConfig
    from maskkit.engine.data import load_train_data

    data, bad = synth_truncated
    cfg = TrainConfig.model_validate({"data": {"path": str(data), "val_fraction": 0.0}})
    assert len(load_train_data(cfg).train.images) == 4 and not load_train_data(cfg).skipped
    cfg = TrainConfig.model_validate({"data": {"path": str(data), "val_fraction": 0.0, "skip_bad_images": True}})
    td = load_train_data(cfg)
    assert len(td.train.images) == 3 and bad.name not in [r.file_name for r in td.train.images]
    assert len(td.skipped) == 1 and bad.name in td.skipped[0]


# -- the CLI: unexpected exceptions ------------------------------------------------------------------
def _crashing_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("maskkit.cli.validate.load_dataset", boom)


def _main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    from maskkit.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["maskkit", *argv])
    monkeypatch.setattr(cli_main, "_DEBUG", False)
    with pytest.raises(SystemExit) as info:
        cli_main.main()
    return int(info.value.code)


def test_unexpected_exception_exit_3_with_traceback_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    _crashing_loader(monkeypatch)
    assert _main(monkeypatch, "validate", "x.json") == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ZeroDivisionError: a bug" in err and "Traceback" not in err
    (log,) = tmp_path.glob("maskkit-crash-*.txt")
    assert str(log) in err and "Traceback (most recent call last)" in log.read_text()


def test_debug_shows_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _crashing_loader(monkeypatch)
    assert _main(monkeypatch, "--debug", "validate", "x.json") == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_data_error_still_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    bad = tmp_path / "annotations.json"
    bad.write_text(json.dumps({"images": [], "annotations": {}}))
    assert _main(monkeypatch, "convert", str(bad), str(tmp_path / "out"), "--to", "yolo") == 2
    assert "Traceback" not in capsys.readouterr().err
