"""The main job end to end, as a user runs it: synthetic data, training, evaluation, prediction."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys


def test_quickstart_reaches_auc_090_on_unseen_identities(tmp_path):
    out = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    proc = subprocess.run(
        [sys.executable, "-m", "deepfake_detect", "quickstart", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "train" / "test" / "metrics.json").read_text())
    assert metrics["frame"]["auc"] >= 0.90
    assert metrics["frame"]["n"] > 0 and metrics["skipped"] == 0
    for name in ("roc.png", "pr.png", "confusion.png", "score_hist.png"):
        assert (out / "train" / "test" / name).is_file()
    assert (out / "train" / "learning_curves.png").is_file()
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["score"] for r in rows)
    # Identities never straddle splits: the test split holds people training never saw.
    ids = {split: {p.name.split("_frame_")[0] for p in (out / "data" / split).rglob("*.png")}
           for split in ("train", "val", "test")}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"]
    assert "report" in proc.stderr and "predictions" in proc.stderr
