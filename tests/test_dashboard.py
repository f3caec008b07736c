"""Evaluation dashboard (six panels) and error analysis (top confident FP / FN)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, tiny_config
from PIL import Image

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.dashboard import (
    PANEL_TITLES,
    build_dashboard,
    plot_dashboard,
)
from deepfake_detect.evaluation.error_analysis import error_analysis, top_errors


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)


def _strip_points(fig) -> np.ndarray:
    """x positions (scores) of every dot in the score-strip panel."""
    strip = fig.axes[5]
    return np.concatenate([c.get_offsets()[:, 0] for c in strip.collections])


def test_dashboard_has_six_titled_panels(tmp_path: Path) -> None:
    y, s = _data()
    fig = build_dashboard(y, s, 0.4, title="toy")
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    for title, expected in zip(titles, PANEL_TITLES):
        assert title.startswith(expected)
    assert "0.400" in titles[2]  # confusion at the threshold
    assert "ECE = " in titles[4]
    # every sample is a dot when no video scores are given
    assert sorted(_strip_points(fig)) == pytest.approx(sorted(s))
    # the confusion cells print counts of the threshold's confusion matrix
    texts = [t.get_text() for t in fig.axes[2].texts]
    fp = int(np.sum((y == 0) & (s > 0.4)))
    assert any(t.startswith(f"{fp}\n") for t in texts)

    out = plot_dashboard(y, s, 0.4, tmp_path / "d" / "dashboard.png", title="toy")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 1000 and im.height > 600
        assert np.asarray(im.convert("L")).std() > 5


def test_dashboard_strip_uses_video_scores() -> None:
    y, s = _data()
    vy, vs = np.array([0, 0, 1]), np.array([0.11, 0.22, 0.93])
    fig = build_dashboard(y, s, 0.5, videos=(vy, vs))
    assert sorted(_strip_points(fig)) == pytest.approx([0.11, 0.22, 0.93])
    assert "per video" in fig.axes[5].get_title()
    with pytest.raises(DataError):
        build_dashboard(y, s, 0.5, videos=(vy, vs[:2]))


def test_dashboard_strip_samples_huge_sets() -> None:
    y, s = _data(n=600)
    fig = build_dashboard(y, s, 0.5, max_strip_dots=50)
    assert len(_strip_points(fig)) == 100  # 50 per class
    assert "sampled" in fig.axes[5].get_title()


def test_dashboard_single_class_does_not_crash(tmp_path: Path) -> None:
    y = np.ones(15, dtype=int)
    s = np.linspace(0.05, 0.95, 15)
    fig = build_dashboard(y, s, 0.5)
    assert len(fig.axes) == 6
    for ax in fig.axes[:2]:  # ROC and PR say why they are empty
        assert any("only one class" in t.get_text() for t in ax.texts)
    assert plot_dashboard(y, s, 0.5, tmp_path / "one.png").is_file()


def _errors_set() -> tuple[np.ndarray, np.ndarray]:
    #               0     1     2     3     4     5     6     7     8     9
    y = np.array([0,    0,    0,    0,    1,    1,    1,    1,    0,    1])
    s = np.array([0.90, 0.55, 0.50, 0.97, 0.10, 0.50, 0.80, 0.30, 0.20, 0.51])
    return y, s


def test_top_errors_by_hand() -> None:
    y, s = _errors_set()
    fp, fn = top_errors(y, s, 0.5, n=2)
    # reals above 0.5: 3 (0.97), 0 (0.90), 1 (0.55); 2 sits at the threshold: not an error
    assert fp.tolist() == [3, 0]
    # fakes at or below 0.5: 4 (0.10), 7 (0.30), 5 (0.50)
    assert fn.tolist() == [4, 7]
    fp, fn = top_errors(y, s, 0.5, n=10)  # fewer errors than asked for
    assert fp.tolist() == [3, 0, 1] and fn.tolist() == [4, 7, 5]


def test_error_analysis_files(tmp_path: Path) -> None:
    y, s = _errors_set()
    paths = []
    for i in range(len(y)):
        p = tmp_path / "img" / f"s{i}.png"
        p.parent.mkdir(exist_ok=True)
        if i == 0:
            p.write_bytes(b"not an image")  # unreadable: a grey tile
        elif i != 4:  # 4 is missing altogether
            Image.fromarray(np.full((40, 30, 3), 25 * i, np.uint8)).save(p)
        paths.append(p)
    videos = [f"vid{i}" for i in range(len(y))]
    report = error_analysis(paths, y, s, 0.5, tmp_path / "out", n=2, videos=videos)
    assert report.counts() == {"false_positives": 3, "false_negatives": 3}
    with open(tmp_path / "out" / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["kind"], Path(r["path"]).name, r["video"]) for r in rows] == [
        ("false_positive", "s3.png", "vid3"), ("false_positive", "s0.png", "vid0"),
        ("false_negative", "s4.png", "vid4"), ("false_negative", "s7.png", "vid7"),
    ]
    assert [float(r["score"]) for r in rows] == [0.97, 0.9, 0.1, 0.3]
    assert [int(r["label"]) for r in rows] == [0, 0, 1, 1]
    with Image.open(tmp_path / "out" / "errors.png") as im:
        sheet = np.asarray(im.convert("RGB"))
    # the unreadable and the missing image are grey tiles (150, 150, 150)
    grey = np.all(sheet == 150, axis=2)
    assert grey.sum() >= 2 * 100 * 100


def test_error_analysis_without_errors(tmp_path: Path) -> None:
    report = error_analysis(["a.png", "b.png"], [0, 1], [0.1, 0.9], 0.5, tmp_path)
    assert report.counts() == {"false_positives": 0, "false_negatives": 0}
    assert (tmp_path / "errors.csv").read_text().strip() == "kind,path,video,label,score"
    assert (tmp_path / "errors.png").is_file()
    with pytest.raises(DataError, match="length"):
        error_analysis(["a.png"], [0, 1], [0.1, 0.9], 0.5, tmp_path)


def test_evaluate_checkpoint_writes_dashboard_and_errors(tmp_path: Path) -> None:
    from deepfake_detect.config import load_config
    from deepfake_detect.evaluation.evaluate import evaluate_checkpoint
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "toy", videos_per_class=3, frames=2,
                        splits=("train", "val", "test"))
    result = train(load_config(base=tiny_config(data, tmp_path / "runs", epochs=1)),
                   out=tmp_path / "run")
    results = evaluate_checkpoint(result.best_checkpoint, [data], tmp_path / "eval",
                                  num_workers=0, progress=False)
    (name, metrics), = results.items()
    folder = tmp_path / "eval" / name
    for f in ("dashboard.png", "errors.csv", "errors.png", "roc.png"):
        assert (folder / f).is_file(), f
    saved = json.loads((folder / "metrics.json").read_text())
    errors = saved["errors"]
    (tn, fp), (fn, tp) = saved["frame"]["confusion"]
    assert (errors["false_positives"], errors["false_negatives"]) == (fp, fn)
    with open(folder / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == min(fp, 16) + min(fn, 16)
    assert all(Path(r["path"]).is_file() for r in rows)
