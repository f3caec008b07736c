"""Shard datasets by object-store URI (data.path s3://..., evaluate --data s3://...) and
evaluation streaming shard items instead of reading files.

A local S3 server (moto, on 127.0.0.1, dummy credentials) holds an uploaded shard folder; no
test reaches the network.
"""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
import torch
from conftest import make_dataset

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import DataConfig
from deepfake_detect.data import FaceDataModule
from deepfake_detect.data.shard_reader import ShardSample, raw_items, read_index, shard_info
from deepfake_detect.data.shards import write_shards
from deepfake_detect.errors import DataError, DeepfakeDetectError
from deepfake_detect.evaluation.evaluate import EvaluateRequest, evaluate
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions

PRE = {"input_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
OPTIONS = ScoringOptions(batch_size=8, num_workers=0, device="cpu", progress=False)
BUCKET = "bucket"


def _key(s):
    return (str(s.path), s.label, s.video, s.split, s.dataset, s.frame, s.group)


def _checkpoint(folder: Path) -> Path:
    from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors

    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    experiment = {"model": det.config.model_dump(mode="json"), "prepare": {}}
    return export_safetensors(det, folder / "model.safetensors",
                              checkpoint_meta(det, threshold=0.5, experiment=experiment))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """A dataset with split folders (one test image truncated: it decodes in no form), its
    shards written by two workers (so items are not in index order) and a checkpoint."""
    root = tmp_path_factory.mktemp("shard-uris")
    data = make_dataset(root / "ds", videos_per_class=4, frames=2, splits=("train", "val", "test"))
    broken = data / "test" / "fake" / "test001_frame_1.png"
    broken.write_bytes(broken.read_bytes()[:60])
    write_shards([data], root / "shards", workers=2, verify="none")
    return {"data": data, "shards": root / "shards", "broken": broken,
            "checkpoint": _checkpoint(root / "run")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch, tmp_path: Path):
    """A moto S3 server on 127.0.0.1 reached through the standard AWS variables, with dummy
    credentials; litdata's default cache folder is moved to a folder that must stay absent."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "DEEPFAKE_DETECT_STORAGE_OPTIONS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance for keys
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # litdata fetches chunks with obstore when it is installed, and obstore refuses a plain
    # http:// endpoint (litdata builds its S3Store without allow_http: "builder error",
    # BadScheme); moto serves http only, so the chunks take litdata's boto3 path here
    monkeypatch.setattr("litdata.streaming.downloader._OBSTORE_AVAILABLE", False)
    default_cache = tmp_path / "litdata-default-cache"
    monkeypatch.setattr("litdata.utilities.dataset_utilities._DEFAULT_CACHE_DIR", str(default_cache))
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield {"client": client, "endpoint": endpoint, "default_cache": default_cache}
    server.stop()


def _upload(client, folder: Path, prefix: str) -> str:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def _module(path, **data) -> FaceDataModule:
    kw = {k: data.pop(k) for k in ("cache_root",) if k in data}
    cfg = DataConfig(path=[path], batch_size=4, num_workers=0, augment={"hflip": 0.0}, **data)
    dm = FaceDataModule(cfg, PRE, seed=0, progress=False, **kw)
    dm.setup()
    return dm


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.rglob("chunk-*.bin")) if folder.exists() else []


# --------------------------------------------------------------------------- config


def test_data_path_keeps_uris_unmangled_and_local_paths_as_paths(tmp_path: Path) -> None:
    cfg = DataConfig(path=["s3://bucket/shards/", "gs://b/x", tmp_path / "local", "rel/data"])
    assert cfg.path == ["s3://bucket/shards", "gs://b/x", tmp_path / "local", Path("rel/data")]
    assert [type(p) for p in cfg.path] == [str, str, type(tmp_path), type(tmp_path)]
    # a URI that went through a Path (a command-line option typed as a path) gets its // back
    assert DataConfig(path=Path("s3://bucket/shards")).path == ["s3://bucket/shards"]
    assert DataConfig(path="azure://container/shards").model_dump(mode="json")["path"] == [
        "azure://container/shards"]
    loaded = load_config(base={"name": "x", "model": {"name": "timm"},
                               "data": {"path": "data"}}, overrides=["data.path=s3://b/shards"])
    assert loaded.data.path == ["s3://b/shards"]
    with pytest.raises(DeepfakeDetectError, match=r"data\.path.*http://host/x.*s3://"):
        load_config(base={"name": "x", "model": {"name": "timm"}},
                    overrides=["data.path=http://host/x"])
    with pytest.raises(ValueError, match="name the bucket"):
        DataConfig(path="s3://")


# --------------------------------------------------------------------------- training data


def test_datamodule_streams_a_shard_dataset_from_s3_like_the_local_folder(
    s3, prepared, tmp_path: Path, monkeypatch
) -> None:
    import tempfile

    # litdata also stages a remote index in a temporary folder while opening: it must be gone
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    uri = _upload(s3["client"], prepared["shards"], "shards")
    local = _module(prepared["shards"])
    remote = _module(uri, cache_root=tmp_path / "out")
    assert remote.shards == uri and remote.class_counts() == local.class_counts()
    assert remote.skipped == local.skipped
    for split in ("train", "val", "test"):
        assert [_key(s) for s in remote.samples(split)] == [_key(s) for s in local.samples(split)]
    # the test split reads its images from the items (looked up once, as the dataset is made)
    from deepfake_detect.data.datasets import FaceImageDataset

    remote_test = FaceImageDataset(remote.samples("test"), lambda image: image)
    local_test = FaceImageDataset(local.samples("test"), lambda image: image)
    assert all(isinstance(s, ShardSample) and s.item >= 0 for s in remote_test.samples)
    for i in range(len(local_test)):  # the truncated image: an error item on both sides
        got, want = remote_test[i], local_test[i]
        assert got.keys() == want.keys()
        if "image" in want:
            assert got["image"].tobytes() == want["image"].tobytes()
    a, b = list(local.val_dataloader()), list(remote.val_dataloader())
    ia, ib = (torch.cat([x["index"] for x in batches]) for batches in (a, b))
    assert sorted(ib.tolist()) == sorted(ia.tolist()) == list(range(len(local.samples("val"))))
    torch.testing.assert_close(torch.cat([x["image"] for x in b])[torch.argsort(ib)],
                               torch.cat([x["image"] for x in a])[torch.argsort(ia)])
    assert torch.equal(torch.cat([x["label"] for x in b])[torch.argsort(ib)],
                       torch.cat([x["label"] for x in a])[torch.argsort(ia)])
    batch = next(iter(remote.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    # litdata's copy of the chunks: in the experiment's output folder, nowhere else
    assert _chunks(tmp_path / "out" / "shard-cache")
    assert not s3["default_cache"].exists() and list(staging.iterdir()) == []
    # the bytes streamed from S3 are those of the local folder
    assert raw_items(uri, "test", cache_dir=tmp_path / "out" / "shard-cache") == \
        raw_items(prepared["shards"], "test")


def test_shard_cache_setting_and_storage_options(s3, prepared, tmp_path: Path,
                                                monkeypatch) -> None:
    uri = _upload(s3["client"], prepared["shards"], "shards")
    # the endpoint given as litdata storage options instead of the standard AWS variable
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("DEEPFAKE_DETECT_STORAGE_OPTIONS",
                       json.dumps({"endpoint_url": s3["endpoint"]}))
    dm = _module(uri, shard_cache=tmp_path / "chunks")
    list(dm.val_dataloader())
    assert _chunks(tmp_path / "chunks") and not s3["default_cache"].exists()
    with pytest.raises(DataError, match="data.shard_cache"):
        _module(uri)  # neither data.shard_cache nor an output folder: never ~/.lightning


# --------------------------------------------------------------------------- evaluation


def _metrics(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    m["report"].pop("data_path")  # where the data was read from: the one difference
    return m


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("split", ["test", "all"])
def test_evaluating_shards_gives_the_numbers_of_the_source_folder(
    prepared, tmp_path: Path, split: str
) -> None:
    import dataclasses

    runs = {}
    for kind in ("data", "shards"):
        # the test split's items read in two loader worker processes, each its own reader
        options = dataclasses.replace(OPTIONS, num_workers=2) if split == "test" else OPTIONS
        runs[kind] = evaluate(EvaluateRequest(
            model=ModelSource(prepared["checkpoint"]), data=[prepared[kind]],
            out_dir=tmp_path / kind, split=split, bootstrap=50, options=options))
    (name,) = runs["data"].results
    assert list(runs["shards"].results) == [name]
    folder, shards = _metrics(tmp_path / "data" / name), _metrics(tmp_path / "shards" / name)
    assert shards == folder
    # the truncated image: skipped as an unreadable file is, named by its source path
    assert shards["skipped"] == 1
    assert shards["skipped_files"][0]["path"] == str(prepared["broken"])
    for table in ("predictions.csv", "video_predictions.csv"):
        got, expected = (_rows(tmp_path / kind / name / table) for kind in ("shards", "data"))
        if split == "all":  # splits in the shards' order (train, val, test), not the scan's
            got, expected = (sorted(rows, key=lambda r: list(r.values())) for rows in (got, expected))
        assert got == expected
    assert not (tmp_path / "shards" / "shard-cache").exists()  # a local folder: read in place


def test_evaluating_a_shard_uri_matches_the_local_folder(s3, prepared, tmp_path: Path) -> None:
    uri = _upload(s3["client"], prepared["shards"], "eval/shards")
    runs = {}
    for kind, data in (("local", prepared["shards"]), ("s3", uri)):
        runs[kind] = evaluate(EvaluateRequest(
            model=ModelSource(prepared["checkpoint"]), data=[data], out_dir=tmp_path / kind,
            split="val", bootstrap=30, options=OPTIONS, perturb=["jpeg:50"]))
    (name,) = runs["local"].results
    assert _metrics(tmp_path / "s3" / name) == _metrics(tmp_path / "local" / name)
    assert runs["s3"].results[name]["robustness"]["rows"] == \
        runs["local"].results[name]["robustness"]["rows"]
    run = json.loads((tmp_path / "s3" / "run.json").read_text())
    assert uri in json.dumps(run)  # recorded as given, not as s3:/...
    # litdata's copy of the chunks lived in the output folder while evaluating, then went
    assert not (tmp_path / "s3" / "shard-cache").exists() and not s3["default_cache"].exists()


def test_benchmark_over_a_shard_uri(s3, prepared, tmp_path: Path) -> None:
    from deepfake_detect.evaluation.benchmark import BenchmarkRequest, benchmark, name_entries

    uri = _upload(s3["client"], prepared["shards"], "bench/ffpp")
    entries = name_entries([Path(uri)], "dataset")  # as the command line hands it over
    assert entries[0].path == uri and entries[0].name == "ffpp"
    result = benchmark(BenchmarkRequest(
        checkpoints=name_entries([prepared["checkpoint"]], "checkpoint"), data=entries,
        out_dir=tmp_path / "bench", split="test", bootstrap=0, options=OPTIONS))
    plain = evaluate(EvaluateRequest(model=ModelSource(prepared["checkpoint"]),
                                     data=[prepared["data"]], out_dir=tmp_path / "plain",
                                     split="test", bootstrap=0, options=OPTIONS))
    ((cell_key, cell),) = result.cells.items()
    assert cell["frame"]["auc"] == plain.results[next(iter(plain.results))]["frame"]["auc"]
    assert not (tmp_path / "bench" / "shard-cache").exists()


# --------------------------------------------------------------------------- errors


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from deepfake_detect.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_a_uri_that_is_not_a_shard_dataset_is_one_error_line(s3, prepared, tmp_path: Path,
                                                             capsys) -> None:
    s3["client"].put_object(Bucket=BUCKET, Key="faces/real/a.png", Body=b"png")
    code, output = _cli(["evaluate", "--checkpoint", str(prepared["checkpoint"]),
                         "--data", f"s3://{BUCKET}/faces", "--out", str(tmp_path / "ev")], capsys)
    line = _one_error_line(output)
    assert code != 0 and f"s3://{BUCKET}/faces" in line and "only shard datasets" in line
    with pytest.raises(DataError, match="only shard datasets"):
        shard_info(f"s3://{BUCKET}/faces")
    with pytest.raises(DataError, match="data.path s3://no-such-bucket/shards: not a shard"):
        _module("s3://no-such-bucket/shards", cache_root=tmp_path / "out")


def test_an_unreachable_endpoint_is_one_error_line(s3, prepared, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nobody there
    code, output = _cli(["evaluate", "--checkpoint", str(prepared["checkpoint"]),
                         "--data", f"s3://{BUCKET}/shards", "--out", str(tmp_path / "ev")], capsys)
    line = _one_error_line(output)
    assert code != 0 and "cannot be reached" in line and "AWS_ENDPOINT_URL" in line


def test_missing_credentials_and_bad_storage_options_are_named(s3, tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataError, match="no credentials.*AWS_ACCESS_KEY_ID"):
        read_index(f"s3://{BUCKET}/shards", "train")
    monkeypatch.setenv("DEEPFAKE_DETECT_STORAGE_OPTIONS", "{endpoint_url: x")
    with pytest.raises(DataError, match="DEEPFAKE_DETECT_STORAGE_OPTIONS is not JSON"):
        shard_info(f"s3://{BUCKET}/shards")
