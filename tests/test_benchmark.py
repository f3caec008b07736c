"""benchmark: every checkpoint on every dataset, the matrix, and paired comparisons."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_dataset
from typer.testing import CliRunner

from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.benchmark import (
    MATRIX_METRICS,
    BenchmarkRequest,
    Entry,
    benchmark,
    name_entries,
)
from deepfake_detect.evaluation.evaluate import EvaluateRequest, evaluate
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions

OPTIONS = ScoringOptions(batch_size=16, num_workers=0, device="cpu", progress=False)


def _checkpoint(folder: Path, seed: int) -> Path:
    from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors

    torch.manual_seed(seed)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    experiment = {"model": det.config.model_dump(mode="json"), "prepare": {}}
    return export_safetensors(det, folder / "model.safetensors",
                              checkpoint_meta(det, threshold=0.5, experiment=experiment))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    ckpts = [_checkpoint(tmp_path / "runs" / "a", 0), _checkpoint(tmp_path / "runs" / "b", 1)]
    data = [make_dataset(tmp_path / "cdf", videos_per_class=4, frames=2, seed=0),
            make_dataset(tmp_path / "dfdc", videos_per_class=5, frames=2, seed=1)]
    return ckpts, data


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_matrix_has_one_cell_per_checkpoint_and_dataset(tmp_path: Path, inputs) -> None:
    ckpts, data = inputs
    result = benchmark(BenchmarkRequest(
        checkpoints=name_entries(ckpts, "checkpoint"), data=name_entries(data, "dataset"),
        out_dir=tmp_path / "bench", bootstrap=50, options=OPTIONS,
    ))
    out = result.out_dir
    # checkpoints named after their run folders (model.safetensors says nothing)
    assert sorted(result.cells) == [("a", "cdf"), ("a", "dfdc"), ("b", "cdf"), ("b", "dfdc")]
    rows = _rows(out / "matrix.csv")
    assert len(rows) == 4 * len(MATRIX_METRICS)
    assert {(r["checkpoint"], r["dataset"]) for r in rows} == set(result.cells)
    # a cell is exactly what a plain evaluate of that checkpoint on that dataset gives
    plain = evaluate(EvaluateRequest(model=ModelSource(ckpts[1]), data=[data[1]],
                                     out_dir=tmp_path / "plain", bootstrap=50, options=OPTIONS))
    cell = next(r for r in rows if r["checkpoint"] == "b" and r["dataset"] == "dfdc"
                and r["metric"] == "frame_auc")
    assert float(cell["value"]) == pytest.approx(plain.results["dfdc"]["frame"]["auc"], abs=1e-6)
    low, high = float(cell["low"]), float(cell["high"])
    assert low <= float(cell["value"]) <= high
    assert cell["n_frames"] == "20" and cell["n_videos"] == "10"
    # the tables and heatmaps
    text = (out / "matrix.md").read_text()
    assert "## frame AUC" in text and "| a |" in text and "| cdf | dfdc |" in text
    for key in ("frame_auc", "video_auc", "frame_eer", "frame_ap"):
        assert (out / f"matrix_{key}.png").stat().st_size > 1000
    # the pair compared on each dataset, frame level (resampling videos) and video level
    pairs = _rows(out / "comparisons.csv")
    assert {(p["dataset"], p["level"]) for p in pairs} == {
        ("cdf", "frame"), ("cdf", "video"), ("dfdc", "frame"), ("dfdc", "video")}
    for p in pairs:
        assert float(p["low"]) <= float(p["diff"]) <= float(p["high"])
        assert float(p["diff"]) == pytest.approx(float(p["auc_a"]) - float(p["auc_b"]))
    frame = next(p for p in pairs if p["dataset"] == "dfdc" and p["level"] == "frame")
    assert frame["resampled"] == "videos" and frame["n"] == "20"
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["checkpoints"] == ["a", "b"] and len(saved["cells"]) == 4


def test_the_same_checkpoint_twice_differs_by_nothing(tmp_path: Path, inputs) -> None:
    ckpts, data = inputs
    result = benchmark(BenchmarkRequest(
        checkpoints=name_entries([ckpts[0], Entry(ckpts[0], "again")], "checkpoint"),
        data=name_entries(data[:1], "dataset"), out_dir=tmp_path / "bench", bootstrap=30,
        options=OPTIONS,
    ))
    for pair in result.comparisons:
        assert pair["diff"] == 0 and pair["low"] == 0 and pair["high"] == 0


def test_videos_are_cut_once_per_dataset_and_face_settings(tmp_path: Path, inputs,
                                                          monkeypatch) -> None:
    import deepfake_detect.data.dataset_videos as dv

    caches: list[Path] = []
    real = dv.gather_samples

    def spy(paths, **kw):
        caches.append(kw["faces_cache"])
        return real(paths, **kw)

    monkeypatch.setattr(dv, "gather_samples", spy)
    ckpts, data = inputs
    benchmark(BenchmarkRequest(checkpoints=name_entries(ckpts, "checkpoint"),
                               data=name_entries(data, "dataset"), out_dir=tmp_path / "bench",
                               bootstrap=0, options=OPTIONS))
    # both checkpoints have the same face settings: one shared cache folder below the output
    assert len(caches) == 4 and len(set(caches)) == 1
    assert caches[0].parent == tmp_path / "bench" / "faces-cache"


def test_names_are_unique_and_file_safe() -> None:
    entries = name_entries(["runs/x/model.safetensors", "runs/y/model.safetensors",
                            "other/x/best.ckpt", {"path": "e.pth", "name": "../effort"}], "checkpoint")
    assert [e.name for e in entries] == ["x", "y", "x-2", "_effort"]  # no path out
    with pytest.raises(ConfigError, match="path, name and config"):
        name_entries([{"path": "a", "weights": 2}], "checkpoint")
    with pytest.raises(ConfigError, match="named 'x'"):
        BenchmarkRequest(checkpoints=[Entry(Path("a"), "x"), Entry(Path("b"), "x")],
                         data=[Entry(Path("d"), "d")]).check()
    with pytest.raises(ConfigError, match="at least one --data"):
        BenchmarkRequest(checkpoints=[Entry(Path("a"), "x")], data=[]).check()


def test_benchmark_command_reads_a_yaml_and_prints_the_matrix(tmp_path: Path, inputs) -> None:
    from deepfake_detect.cli import app

    ckpts, data = inputs
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        f"checkpoints:\n  - {{path: {ckpts[0]}, name: first}}\n"
        f"data:\n  - {data[0]}\nbootstrap: 20\n"
    )
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "benchmark", "--config", str(spec), "--checkpoint", str(ckpts[1]), "--data", str(data[1]),
        "--out", str(out), "--workers", "0", "--device", "cpu",
    ], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "frame AUC" in result.output and "paired AUC difference" in result.output
    assert {r["checkpoint"] for r in _rows(out / "matrix.csv")} == {"first", "b"}
    assert json.loads((out / "cells" / "first" / "cdf" / "metrics.json").read_text())[
        "frame"]["ci"]["n_resamples"] == 20
    bad = CliRunner().invoke(app, ["benchmark", "--data", str(data[0]), "--out",
                                   str(tmp_path / "b2")])
    assert bad.exit_code != 0 and "--checkpoint" in bad.output


def test_perturbations_give_one_curve_per_dataset_and_kind_with_a_line_per_checkpoint(
    tmp_path: Path, inputs
) -> None:
    ckpts, data = inputs
    result = benchmark(BenchmarkRequest(
        checkpoints=name_entries(ckpts, "checkpoint"), data=name_entries(data[:1], "dataset"),
        out_dir=tmp_path / "bench", bootstrap=0, perturb=["jpeg:50,20", "blur:2"],
        options=OPTIONS,
    ))
    out = result.out_dir
    for kind in ("jpeg", "blur"):
        assert (out / "robustness" / f"cdf_{kind}.png").stat().st_size > 1000
    for ckpt in ("a", "b"):
        rows = _rows(out / "cells" / ckpt / "cdf" / "robustness" / "robustness.csv")
        # clean (severity 0) + 2 jpeg severities + 1 blur, frame and video level
        frame = [r for r in rows if r["level"] == "frame"]
        assert sorted((r["perturbation"], float(r["severity"])) for r in frame) == sorted(
            [("jpeg", 0.0), ("jpeg", 50.0), ("jpeg", 20.0), ("blur", 0.0), ("blur", 2.0)])
        clean = next(r for r in frame if r["perturbation"] == "jpeg" and float(r["severity"]) == 0)
        assert float(clean["auc"]) == pytest.approx(result.cells[(ckpt, "cdf")]["frame"]["auc"])
    with pytest.raises(ConfigError, match="did you mean"):
        benchmark(BenchmarkRequest(checkpoints=name_entries(ckpts, "checkpoint"),
                                   data=name_entries(data[:1], "dataset"), perturb=["jepg:50"],
                                   out_dir=tmp_path / "b2", options=OPTIONS))
    assert not (tmp_path / "b2").exists()  # refused before anything was written


def test_robustness_rows_carry_intervals_and_the_clean_row_matches_evaluate(tmp_path: Path,
                                                                             inputs) -> None:
    ckpts, data = inputs
    evaluation = evaluate(EvaluateRequest(model=ModelSource(ckpts[0]), data=[data[1]],
                                          out_dir=tmp_path / "e", bootstrap=40, seed=2,
                                          perturb=["jpeg:30"], options=OPTIONS))
    metrics = evaluation.results["dfdc"]
    rows = _rows(tmp_path / "e" / "dfdc" / "robustness" / "robustness.csv")
    clean = next(r for r in rows if r["level"] == "frame" and float(r["severity"]) == 0)
    # the same samples, seed and resamples: the clean row's interval is evaluate's own
    assert float(clean["auc_low"]) == pytest.approx(metrics["frame"]["ci"]["auc"]["low"], abs=1e-6)
    assert float(clean["auc_high"]) == pytest.approx(metrics["frame"]["ci"]["auc"]["high"], abs=1e-6)
    for row in rows:  # every perturbation and severity has its interval
        assert 0 <= float(row["auc_low"]) <= float(row["auc_high"]) <= 1
    assert metrics["robustness"]["rows"] and "dir" in metrics["robustness"]
