"""Plot files: written, valid PNGs, sensible sizes; single-class data and sparse CSVs handled."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation import (
    plot_confusion,
    plot_learning_curves,
    plot_pr,
    plot_roc,
    save_evaluation_plots,
)
from deepfake_detect.evaluation.plots import plot_reliability


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert 200 < w < 2500 and 200 < h < 2500
        # not a blank canvas
        assert np.asarray(im.convert("L")).std() > 5


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    return y, s


def test_save_evaluation_plots(tmp_path: Path) -> None:
    y, s = _data()
    paths = save_evaluation_plots(y, s, 0.5, tmp_path / "plots", prefix="video_")
    names = sorted(p.name for p in paths)
    assert names == ["video_confusion.png", "video_pr.png", "video_reliability.png", "video_roc.png",
                     "video_score_hist.png"]
    for p in paths:
        _assert_png(p)


def test_single_class_skips_roc_and_pr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    y = np.zeros(20, dtype=int)
    s = np.linspace(0.05, 0.95, 20)
    with caplog.at_level(logging.WARNING):
        paths = save_evaluation_plots(y, s, 0.5, tmp_path)
    assert sorted(p.name for p in paths) == ["confusion.png", "reliability.png", "score_hist.png"]
    assert not (tmp_path / "roc.png").exists()
    assert "one class" in caplog.text
    assert plot_roc(y, s, tmp_path / "r.png") is None
    assert plot_pr(y, s, tmp_path / "p.png") is None
    for p in paths:
        _assert_png(p)


def test_confusion_shape_checked(tmp_path: Path) -> None:
    # an empty row must not divide by zero
    _assert_png(plot_confusion([[5, 1], [0, 0]], tmp_path / "c.png"))
    with pytest.raises(DataError, match="2x2"):
        plot_confusion([[1, 2, 3]], tmp_path / "bad.png")


def test_learning_curves_from_sparse_csv(tmp_path: Path) -> None:
    # Lightning CSVLogger style: step rows and epoch rows fill different columns.
    lines = ["epoch,step,lr-AdamW,train_loss_step,train_loss_epoch,val_loss,val_auc"]
    step = 0
    for epoch in range(4):
        for _ in range(3):
            lines.append(f",{step},0.001,,,,")  # lr monitor row without epoch: skipped
            lines.append(f"{epoch},{step},,{1.0 / (step + 1):.4f},,,")
            step += 1
        lines.append(f"{epoch},{step - 1},,,{0.9 - 0.1 * epoch},,")
        lines.append(f"{epoch},{step - 1},,,,{1.0 - 0.1 * epoch},{0.6 + 0.05 * epoch}")
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    out = plot_learning_curves(csv_path, tmp_path / "curves" / "learning_curves.png")
    assert out is not None
    _assert_png(out)


def test_learning_curves_edge_cases(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        plot_learning_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,val_loss\n0,10,\n")
    assert plot_learning_curves(empty, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="epoch"):
        plot_learning_curves(wrong, tmp_path / "y.png")


def test_reliability_diagram(tmp_path: Path) -> None:
    y, s = _data()
    _assert_png(plot_reliability(y, s, tmp_path / "rel" / "reliability.png"))
    # saturated scores fill only the end bins; nothing divides by an empty bin
    _assert_png(plot_reliability([0, 1, 1], [0.0, 1.0, 1.0], tmp_path / "edge.png"))
    with pytest.raises(DataError, match="probabilities"):
        plot_reliability([0, 1], [0.5, 1.5], tmp_path / "bad.png")
