"""shard --node-rank R --num-nodes N (several machines, one shard dataset), shard-merge, and
prepare --shards DIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BrightSquare, make_dataset, square_frames, write_video
from typer.testing import CliRunner

from deepfake_detect.cli.app import app
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data import prepare as prep
from deepfake_detect.data.prepare import merge_parts, prepare
from deepfake_detect.data.shard_reader import SPLITS, raw_items, read_index, shard_info
from deepfake_detect.data.shards import (
    NODES,
    NodesNotReady,
    ShardOptions,
    _node_lock,
    merge_shard_nodes,
    write_shards,
)
from deepfake_detect.errors import DataError, OutputError

FLAGS = ["--frames", "4", "--batch-size", "4", "--size", "32", "--device", "cpu"]


def _settings() -> PrepareConfig:  # as FLAGS
    return PrepareConfig.model_validate({"frames": {"count": 4}, "detect": {"batch_size": 4},
                                         "crop": {"size": 32}})


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """Videos with a bright square as the face (BrightSquare finds it), in split/label folders."""
    root = tmp_path / "media"
    for i, (split, label) in enumerate([("train", "real"), ("train", "fake"), ("val", "real"),
                                        ("val", "fake"), ("train", "real"), ("train", "fake")]):
        write_video(root / split / label / f"v{i}.mp4", square_frames(5 + i, empty=(1,)))
    return root


def _flat(text: str) -> str:
    return " ".join(text.split())


def _key(s):
    return (str(s.path), s.label, s.video, s.split, s.dataset, s.frame, s.group)


def assert_same_dataset(a: Path, b: Path) -> None:
    """Two shard folders hold the same dataset: samples, index numbering, bytes, metadata,
    samples.csv and the counts of shards.json (the chunk layout may differ)."""
    ia, ib = shard_info(a), shard_info(b)
    assert ia is not None and ib is not None
    for key in ("splits", "counts", "videos", "skipped", "split_rule", "inputs"):
        assert ia[key] == ib[key], key
    for split in SPLITS:
        assert [_key(s) for s in read_index(a, split)] == [_key(s) for s in read_index(b, split)]
        items_a, items_b = raw_items(a, split), raw_items(b, split)
        assert len(items_a) == sum(ia["counts"].get(split, {}).values())
        assert [it["index"] for it in items_b] == list(range(len(items_a)))
        for x, y in zip(items_a, items_b, strict=True):
            assert (x["image"], x["label"], x["index"], x["meta"]) == (
                y["image"], y["label"], y["index"], y["meta"])
        csv_a, csv_b = a / split / "samples.csv", b / split / "samples.csv"
        assert csv_a.is_file() == csv_b.is_file()
        if csv_a.is_file():
            assert csv_a.read_bytes() == csv_b.read_bytes()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "ds", videos_per_class=4, frames=2)
    (root / "fake" / "v003_frame_1.png").write_bytes(b"not a png")  # skipped, and counted
    return root


@pytest.mark.parametrize("nodes", [2, 5])
def test_nodes_give_the_dataset_one_machine_gives(tmp_path: Path, data: Path, nodes: int) -> None:
    one = write_shards([data], tmp_path / "one", test_fraction=0.25)
    assert one.skipped and shard_info(tmp_path / "one")["skipped"]
    out = tmp_path / "multi"
    for r in range(nodes):
        report = write_shards([data], out, test_fraction=0.25, node=(r, nodes))
        if r < nodes - 1:
            # a node's share only; not a shard folder until the last node merges
            assert report.node == (r, nodes) and not report.merged_nodes
            assert shard_info(out) is None
            notes = " ".join(report.notes)
            assert f" {nodes - 1}/{nodes} missing" in notes  # the last node, named
            assert f"--node-rank {nodes - 1} --num-nodes {nodes}" in notes
            assert (out / NODES / f"node-{r}-of-{nodes}" / "node.json").is_file()
    assert report.merged_nodes == nodes and report.node is None
    assert report.counts == one.counts and report.skipped == one.skipped
    assert_same_dataset(tmp_path / "one", out)
    assert shard_info(out)["nodes"] == nodes
    assert not (out / NODES).exists()  # merged: the node parts are gone


def test_a_split_held_by_one_node(tmp_path: Path) -> None:
    """Shares are contiguous item ranges: with more nodes than items some write nothing, and a
    split of one item lies with one node (copied, as litdata merges two or more datasets)."""
    data = make_dataset(tmp_path / "ds", videos_per_class=1, frames=1, splits=("train", "val"))
    (data / "val" / "fake" / "val000_frame_0.png").unlink()  # val: one image
    out = tmp_path / "multi"
    shares = [write_shards([data], out, node=(r, 3)) for r in range(3)]
    assert shares[0].counts == {}  # node 0's share of 2 train and 1 val items is empty
    assert shares[2].merged_nodes == 3
    assert shard_info(out)["counts"] == {"train": {"real": 1, "fake": 1},
                                         "val": {"real": 1, "fake": 0}}
    write_shards([data], tmp_path / "one")
    assert_same_dataset(tmp_path / "one", out)


def test_nodes_running_at_the_same_time(tmp_path: Path, data: Path) -> None:
    """Two real processes on one folder: both write their share; the last to finish merges."""
    out = tmp_path / "multi"
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "deepfake_detect", "shard", str(data),
                               "--out", str(out), "--node-rank", str(r), "--num-nodes", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("2 nodes merged" in o for o in outputs) == 1, outputs
    write_shards([data], tmp_path / "one")
    assert_same_dataset(tmp_path / "one", out)


def test_missing_and_incomplete_nodes_are_named(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "multi"
    write_shards([data], out, val_fraction=0.3, node=(0, 3))
    last = write_shards([data], out, val_fraction=0.3, node=(2, 3))
    assert not last.merged_nodes and shard_info(out) is None
    assert "node 1/3 missing" in " ".join(last.notes)
    with pytest.raises(NodesNotReady, match=r"node 1/3 missing.*--val-fraction 0\.3 "
                                            r"--node-rank 1 --num-nodes 3"):
        merge_shard_nodes(out)
    result = CliRunner().invoke(app, ["shard-merge", str(out)])
    assert result.exit_code != 0 and "node 1/3 missing" in str(result.exception)
    # a node whose chunks are lost is incomplete, and named with the command that redoes it
    chunk = next((out / NODES / "node-0-of-3" / "train").glob("*.bin"))
    chunk.unlink()
    write_shards([data], out, val_fraction=0.3, node=(1, 3))  # all there now, but node 0 broken
    with pytest.raises(NodesNotReady, match=r"node 0/3 incomplete.*--node-rank 0 --num-nodes 3"):
        merge_shard_nodes(out)
    # rerunning a node is safe: it redoes its own share; then the merge gives the dataset
    again = write_shards([data], out, val_fraction=0.3, node=(0, 3))
    assert again.merged_nodes == 3
    write_shards([data], tmp_path / "one", val_fraction=0.3)
    assert_same_dataset(tmp_path / "one", out)


def test_nodes_that_disagree_are_refused(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "multi"
    write_shards([data], out, node=(0, 2))
    with pytest.raises(DataError, match=r"node 1/2 is written, but .*node 0/2 ran with other "
                                        r"inputs or options than node 1/2 \(--val-fraction"):
        write_shards([data], out, val_fraction=0.3, node=(1, 2))
    with pytest.raises(DataError, match=r"node 1/2 ran with other inputs or options than node 0/2"):
        merge_shard_nodes(out)
    assert shard_info(out) is None and not (out / "train").exists()  # nothing merged
    # same options, other files (e.g. a machine that sees another copy of the data)
    write_shards([data], out, node=(1, 2))
    assert shard_info(out) is not None
    other = tmp_path / "multi2"
    write_shards([data], other, node=(0, 2))
    make_dataset(data, videos_per_class=5, frames=2, seed=1)  # one more video per class
    with pytest.raises(DataError, match=r"node 0/2 found other samples than node 1/2"):
        write_shards([data], other, node=(1, 2))


def test_merge_checks_and_node_locks(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "multi"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no node parts"):
        merge_shard_nodes(tmp_path / "empty")
    write_shards([data], out, node=(0, 3))
    write_shards([data], out, node=(0, 2))
    with pytest.raises(DataError, match=r"different --num-nodes \(2, 3\).*--num-nodes N"):
        merge_shard_nodes(out)
    merged = write_shards([data], out, node=(1, 2))  # merges the 2 nodes, leaves the 3's part
    assert merged.merged_nodes == 2 and "--num-nodes 3" in " ".join(merged.notes)
    assert (out / NODES / "node-0-of-3" / "node.json").is_file()
    with _node_lock(out, (1, 3)):
        with pytest.raises(OutputError, match=r"node 1/3 .* another run"):  # the same node twice
            write_shards([data], out, node=(1, 3))
        with pytest.raises(OutputError, match="in use"):  # a whole run while a node runs
            write_shards([data], out)
        with pytest.raises(OutputError, match="in use"):  # a merge too
            merge_shard_nodes(out, num_nodes=3)
        write_shards([data], out, node=(2, 3))  # another node may run meanwhile
    assert shard_info(out)["nodes"] == 2  # the 3-node merge waited for node 1
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(DataError, match="0 <= R < N"):
            write_shards([data], tmp_path / "x", node=bad)
    assert not (tmp_path / "x").exists()


def test_shard_cli_nodes_and_help(tmp_path: Path, data: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "multi"
    first = runner.invoke(app, ["shard", str(data), "--out", str(out), "--node-rank", "0",
                                "--num-nodes", "2"])
    assert first.exit_code == 0, first.output
    shown = _flat(first.output)  # rich wraps long lines at the terminal's width
    assert "shard node 0/2" in shown and "node 1/2 missing" in shown
    assert "--node-rank 1 --num-nodes 2" in shown  # the command that makes it
    second = runner.invoke(app, ["shard", str(data), "--out", str(out), "--node-rank", "1",
                                 "--num-nodes", "2"])
    assert second.exit_code == 0, second.output
    assert "2 nodes merged" in _flat(second.output) and shard_info(out)["nodes"] == 2
    alone = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path / "o"), "--node-rank", "0"])
    assert alone.exit_code == 2 and "together" in alone.output
    wrong = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path / "o"),
                                "--node-rank", "2", "--num-nodes", "2"])
    assert wrong.exit_code == 2 and "0 <= R < N" in wrong.output
    assert not (tmp_path / "o").exists()
    env = {"COLUMNS": "250"}
    helped = runner.invoke(app, ["shard", "--help"], env=env)
    assert helped.exit_code == 0
    assert "--node-rank" in helped.output and "--num-nodes" in helped.output
    assert "--node-rank 0 --num-nodes 4" in helped.output  # the example
    merge_help = runner.invoke(app, ["shard-merge", "--help"], env=env)
    assert merge_help.exit_code == 0 and "deepfake-detect shard-merge /nfs/faces-shards" in merge_help.output
    for command in ("prepare", "prepare-merge"):
        shown = runner.invoke(app, [command, "--help"], env=env)
        assert shown.exit_code == 0 and "--shards" in shown.output
        assert f"deepfake-detect {command} " in shown.output and "--shards " in shown.output


def test_prepare_shards_cli_equals_shard_of_the_output(tmp_path: Path, media: Path,  # noqa: F811
                                                       monkeypatch) -> None:
    monkeypatch.setattr(prep, "build_face_finder", lambda *a: BrightSquare())
    monkeypatch.setattr(prep, "check_detect_config", lambda *a: None)
    runner = CliRunner()
    out, shards = tmp_path / "faces", tmp_path / "shards"
    result = runner.invoke(app, ["prepare", str(media), "--out", str(out), *FLAGS,
                                 "--shards", str(shards), "--val-fraction", "0.5",
                                 "--split-seed", "3"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.csv").is_file() and "train" in result.output
    info = shard_info(shards)
    assert info["inputs"] == [str(out)] and info["split_rule"]["split_seed"] == 3
    write_shards([out], tmp_path / "by-shard", val_fraction=0.5, split_seed=3)
    assert_same_dataset(tmp_path / "by-shard", shards)
    assert sum(info["counts"]["train"].values()) > 0
    # prepare.json's summary does not carry the shard report
    assert "shards" not in json.loads((out / "prepare.json").read_text())["summary"]


def test_prepare_shards_refusals(tmp_path: Path, media: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(prep, "build_face_finder", lambda *a: BrightSquare())
    monkeypatch.setattr(prep, "check_detect_config", lambda *a: None)
    runner = CliRunner()
    out = tmp_path / "faces"
    stray = runner.invoke(app, ["prepare", str(media), "--out", str(out), "--test-fraction", "0.1"])
    assert stray.exit_code == 2 and "--shards" in stray.output
    parts = runner.invoke(app, ["prepare", str(media), "--out", str(out), "--part", "0/2",
                                "--shards", str(tmp_path / "s")])
    assert isinstance(parts.exception, DataError) and "prepare-merge" in str(parts.exception)
    for inside in (out / "shards", media / "shards", out):  # refused before any work
        with pytest.raises(OutputError, match="inside the input|holds the input"):
            prepare([media], out, _settings(), progress=False, detector=BrightSquare(),
                    shards=ShardOptions(inside))
    assert not (out / "manifest.csv").exists() and not (media / "shards").exists()


def test_prepare_merge_shards(tmp_path: Path, media: Path) -> None:  # noqa: F811
    out = tmp_path / "faces"
    for i in range(2):
        prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(i, 2))
    with pytest.raises(OutputError, match="holds the input"):
        merge_parts(out, shards=ShardOptions(tmp_path))  # checked before merging
    assert not (out / "manifest.csv").exists()
    report = merge_parts(out, shards=ShardOptions(tmp_path / "shards", test_fraction=0.3))
    assert report.shards is not None and report.shards.out == tmp_path / "shards"
    write_shards([out], tmp_path / "by-shard", test_fraction=0.3)
    assert_same_dataset(tmp_path / "by-shard", tmp_path / "shards")


def test_shares_that_do_not_tile_a_split_are_refused(tmp_path: Path, data: Path) -> None:
    """Nodes of tool versions that cut the splits differently must not make a dataset with
    items missing or twice."""
    out = tmp_path / "multi"
    write_shards([data], out, node=(0, 2))
    marker = out / NODES / "node-0-of-2" / "node.json"
    info = json.loads(marker.read_text())
    lo, hi, total = info["splits"]["train"]
    info["splits"]["train"] = [lo, hi - 1, total]
    marker.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"shares of train do not cover its \d+ items exactly once"):
        write_shards([data], out, node=(1, 2))
    assert shard_info(out) is None
