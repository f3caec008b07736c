"""predict and dataset discovery with symbolic links: broken links and loops get a row (or are
counted as skipped), symlinked folders that loop end, and links to real files are scored."""

from __future__ import annotations

import csv
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepfake_detect.cli.app import app
from deepfake_detect.data.sources import file_problem, scan, walk_files
from deepfake_detect.inference.predict import collect_inputs, predict_files
from deepfake_detect.models import (
    build_detector,
    checkpoint_meta,
    export_safetensors,
    load_checkpoint,
)

runner = CliRunner()
IMAGES = ("good.png", "link.png", "gone.png", "loop.png", "inner.png")
# Crops are scored as they are without face detection; say so, in case the default changes.
AS_CROPS = "--no-detect-faces"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    experiment = {"model": det.config.model_dump(mode="json")}
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return export_safetensors(det, path, checkpoint_meta(det, threshold=0.5, experiment=experiment))


@pytest.fixture
def folder(tmp_path: Path, shared: Path) -> Path:
    """good.png, link.png -> good.png, gone.png -> (missing), loop.png -> loop.png,
    sub/inner.png and sub/back -> .. (a folder loop)."""
    crop = sorted((shared / "media" / "crops" / "real").glob("*.png"))[0]
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    shutil.copy(crop, root / "good.png")
    shutil.copy(crop, root / "sub" / "inner.png")
    os.symlink("good.png", root / "link.png")
    os.symlink("missing-target.png", root / "gone.png")
    os.symlink("loop.png", root / "loop.png")
    os.symlink("..", root / "sub" / "back", target_is_directory=True)
    return root


def _gone_error(root: Path) -> str:
    return f"broken symbolic link: target {os.path.realpath(root / 'missing-target.png')} missing"


def _in_time(fn, seconds: float = 120):
    """fn() run in a daemon thread: fails (instead of hanging the suite) if it does not end."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds}s (a symlink loop followed?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_file_problem_names_broken_links_and_loops(folder: Path) -> None:
    assert file_problem(folder / "good.png") is None
    assert file_problem(folder / "link.png") is None
    assert file_problem(folder / "gone.png") == _gone_error(folder)
    assert file_problem(folder / "loop.png") == "symbolic link loop"
    assert file_problem(folder / "nothing.png") == "no such file or folder"
    assert file_problem(folder / "sub") is not None  # a folder is not a file


def test_walk_files_visits_each_real_folder_once(folder: Path) -> None:
    found = _in_time(lambda: walk_files(folder))
    rel = [p.relative_to(folder).as_posix() for p in found]
    # the folder loop sub/back -> .. is not walked again; broken links are listed, not dropped
    assert rel == ["gone.png", "good.png", "link.png", "loop.png", "sub/inner.png"]


def test_collect_inputs_gives_every_file_a_place(folder: Path, tmp_path: Path) -> None:
    files, errors = _in_time(lambda: collect_inputs([folder]))
    assert sorted(p.relative_to(folder).as_posix() for p in files) == [
        "good.png", "link.png", "sub/inner.png"
    ]
    assert {Path(r.filename).name: r.error for r in errors} == {
        "gone.png": _gone_error(folder), "loop.png": "symbolic link loop"
    }
    # given directly on the command line
    files, errors = collect_inputs(
        [folder / "gone.png", folder / "loop.png", folder / "link.png", tmp_path / "nope.png"]
    )
    assert files == [folder / "link.png"]
    assert [(Path(r.filename).name, r.error) for r in errors] == [
        ("gone.png", _gone_error(folder)),
        ("loop.png", "symbolic link loop"),
        ("nope.png", "no such file or folder"),
    ]


def test_predict_files_gives_every_image_one_row(folder: Path, checkpoint: Path) -> None:
    detector = load_checkpoint(checkpoint)
    rows = _in_time(lambda: predict_files(detector, [folder], progress=False, device="cpu",
                                          num_workers=0, detect_faces=False))
    names = Counter(Path(r.filename).name for r in rows)
    assert names == Counter(IMAGES)  # each exactly once
    by_name = {Path(r.filename).name: r for r in rows}
    for name in ("good.png", "link.png", "inner.png"):
        r = by_name[name]
        assert r.error == "" and r.score is not None and 0 <= r.score <= 1 and r.label in (0, 1)
    # a link to a file is scored as that file
    assert by_name["link.png"].score == pytest.approx(by_name["good.png"].score)
    assert by_name["link.png"].filename == str(folder / "link.png")
    gone, loop = by_name["gone.png"], by_name["loop.png"]
    assert (gone.score, gone.label, gone.error) == (None, None, _gone_error(folder))
    assert (loop.score, loop.label, loop.error) == (None, None, "symbolic link loop")


def _predict_cli(checkpoint: Path, *args: str):
    return _in_time(lambda: runner.invoke(
        app, ["predict", "--checkpoint", str(checkpoint), *args, AS_CROPS, "--workers", "0",
              "--device", "cpu"]
    ))


def test_cli_csv_lists_broken_links_with_their_error(folder: Path, checkpoint: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    result = _predict_cli(checkpoint, str(folder), "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert Counter(Path(r["filename"]).name for r in rows) == Counter(IMAGES)
    by_name = {Path(r["filename"]).name: r for r in rows}
    for name in ("good.png", "link.png", "inner.png"):
        assert by_name[name]["error"] == "" and by_name[name]["score"] != ""
        assert by_name[name]["label"] in ("0", "1")
    assert by_name["link.png"]["score"] == by_name["good.png"]["score"]
    assert by_name["gone.png"]["error"] == _gone_error(folder)
    assert by_name["loop.png"]["error"] == "symbolic link loop"
    for name in ("gone.png", "loop.png"):
        assert by_name[name]["score"] == "" and by_name[name]["label"] == ""


@pytest.mark.parametrize("fail_label", ["0", "1"])
def test_cli_submission_gives_broken_links_the_fail_label(folder: Path, checkpoint: Path,
                                                          tmp_path: Path, fail_label: str) -> None:
    out = tmp_path / "submission.csv"
    result = _predict_cli(checkpoint, str(folder), "--format", "submission", "--out", str(out),
                          "--fail-label", fail_label)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "filename,label"
    rows = [line.split(",") for line in lines[1:]]
    assert [name for name, _ in rows] == sorted(IMAGES)  # each once, sorted
    labels = dict(rows)
    assert labels["gone.png"] == fail_label and labels["loop.png"] == fail_label
    assert all(labels[n] in ("0", "1") for n in ("good.png", "link.png", "inner.png"))
    assert labels["link.png"] == labels["good.png"]
    flat = " ".join(result.output.split())  # the console wraps long lines
    assert "broken symbolic link" in flat and "symbolic link loop" in flat
    assert f"not scored, labelled {fail_label}" in flat


def test_cli_broken_links_given_directly(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = _predict_cli(checkpoint, str(folder / "gone.png"), str(folder / "loop.png"),
                          str(folder / "link.png"), "--format", "submission", "--out", str(out),
                          "--fail-label", "0")
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [name for name, _ in rows] == ["gone.png", "link.png", "loop.png"]
    assert dict(rows)["gone.png"] == "0" and dict(rows)["loop.png"] == "0"
    flat = " ".join(result.output.split())  # the console wraps long lines
    assert "gone.png (broken symbolic link: target" in flat
    assert "loop.png (symbolic link loop)" in flat


def test_csv_manifest_counts_broken_links_as_missing(tmp_path: Path, shared: Path) -> None:
    """Datasets: a broken link listed in a CSV, or in a folder a CSV lists, is left out with
    its reason (counted as skipped by training and evaluation), never silently."""
    crop = sorted((shared / "media" / "crops" / "real").glob("*.png"))[0]
    base = tmp_path / "data"
    (base / "v1").mkdir(parents=True)
    shutil.copy(crop, base / "a.png")
    shutil.copy(crop, base / "v1" / "0001.png")
    os.symlink("missing-target.png", base / "gone.png")
    os.symlink("0009.png", base / "v1" / "0009.png")  # loop inside a video folder
    os.symlink("nowhere.png", base / "v1" / "0010.png")  # broken inside a video folder
    manifest = base / "list.csv"
    manifest.write_text("path,label\na.png,real\ngone.png,fake\nv1,fake\n")
    found = scan([manifest])
    assert sorted(s.path.name for s in found.samples) == ["0001.png", "a.png"]
    reasons = {p.name: why for p, why in found.missing}
    assert set(reasons) == {"gone.png", "0009.png", "0010.png"}
    assert reasons["gone.png"].startswith(_gone_error(base)) and "line 3" in reasons["gone.png"]
    assert reasons["0009.png"].startswith("symbolic link loop") and "line 4" in reasons["0009.png"]
    assert reasons["0010.png"].startswith("broken symbolic link: target ")


def test_label_folder_loops_end_and_broken_links_reach_verification(tmp_path: Path,
                                                                    shared: Path) -> None:
    """Label-folder datasets are unchanged: a folder loop ends, and broken links stay samples
    that the image check (data.verify) reports as skipped with a reason."""
    from deepfake_detect.data.images import verify_images

    crop = sorted((shared / "media" / "crops" / "real").glob("*.png"))[0]
    root = tmp_path / "ds"
    for label in ("real", "fake"):
        (root / label / "v1").mkdir(parents=True)
        shutil.copy(crop, root / label / "v1" / "0001.png")
    os.symlink("..", root / "real" / "v1" / "back", target_is_directory=True)
    os.symlink("missing-target.png", root / "fake" / "gone.png")
    os.symlink("loop.png", root / "fake" / "loop.png")
    found = _in_time(lambda: scan([root]))
    names = sorted(s.path.relative_to(root).as_posix() for s in found.samples)
    assert names == ["fake/gone.png", "fake/loop.png", "fake/v1/0001.png", "real/v1/0001.png"]
    bad = dict(verify_images([s.path for s in found.samples], "header"))
    assert set(bad) == {root / "fake" / "gone.png", root / "fake" / "loop.png"}
    assert all(bad.values())


def test_prepare_discovery_follows_links_like_predict_and_datasets(folder: Path,
                                                                     tmp_path: Path) -> None:
    """prepare's media discovery walks folders as predict and datasets do: symlinked folders
    followed, each real folder once; broken links and loops reported with the same reason
    (they used to be left to fail later, and symlinked folders were not entered)."""
    from deepfake_detect.data.media_inputs import find_media

    elsewhere = tmp_path / "elsewhere" / "clips"
    elsewhere.mkdir(parents=True)
    shutil.copy(folder / "good.png", elsewhere / "far.png")
    os.symlink(elsewhere, folder / "linked", target_is_directory=True)
    found = _in_time(lambda: find_media([folder]))
    files, errors = collect_inputs([folder])
    assert sorted(i.path for i in found.items) == sorted(files)
    assert sorted(i.path.relative_to(folder).as_posix() for i in found.items) == [
        "good.png", "link.png", "linked/far.png", "sub/inner.png"
    ]
    assert {i.video for i in found.items} == {"good", "link", "linked/far", "sub/inner"}
    assert sorted(found.problems) == sorted((r.filename, r.error) for r in errors)
    assert dict(found.problems)[str(folder / "gone.png")] == _gone_error(folder)
    # a CSV manifest: the datasets' reader, and a listed broken link with the datasets' reason
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label,split\n{folder / 'good.png'},real,val\n"
                        f"{folder / 'gone.png'},fake,\n")
    listed = find_media([manifest])
    assert [(i.path.name, i.label, i.split) for i in listed.items] == [("good.png", 0, "val")]
    ((_, why),) = listed.problems
    assert why == f"{_gone_error(folder)} (listed in {manifest} line 3)"
    assert scan([manifest]).missing == [(folder / "gone.png", why)]
