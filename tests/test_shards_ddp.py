"""Shard datasets under DDP and mid-epoch resume: real processes, real gloo process groups.

- two ranks over one shard folder read disjoint parts that together are the training split,
  each sample once per epoch, in an order that changes with the epoch;
- `train` with 2-process DDP on shards validates exactly like training on the folder;
- a run killed mid-epoch (SIGKILL) and resumed trains on exactly the samples an uninterrupted
  run trains on, in the same order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_dataset, tiny_config

from deepfake_detect.data.shard_reader import read_index
from deepfake_detect.data.shards import write_shards

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# One rank of a gloo process group: the datamodule's loaders over the shard folder, two epochs.
RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from deepfake_detect.config.schema import DataConfig
    from deepfake_detect.data import FaceDataModule

    shards, out, batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    cfg = DataConfig(path=[shards], batch_size=batch, num_workers=workers,
                     augment={"hflip": 0.0})
    pre = {"input_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dm = FaceDataModule(cfg, pre, seed=3, progress=False)
    dm.setup()
    train = dm.train_dataloader()
    seen = {"train": [], "val": []}
    for epoch in range(2):
        seen["train"].append([[int(i) for i in b["index"]] for b in train])
    seen["val"] = [int(i) for b in dm.val_dataloader() for i in b["index"]]
    with open(out, "w") as fh:
        json.dump(seen, fh)
    dist.barrier()
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(tmp_path: Path, shards: Path, batch: int, workers: int) -> list[dict]:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}
        out = tmp_path / f"rank{rank}.json"
        procs.append((subprocess.Popen(
            [sys.executable, str(script), str(shards), str(out), str(batch), str(workers)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out))
    seen = []
    for proc, out in procs:
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-3000:]
        seen.append(json.loads(out.read_text()))
    return seen


@pytest.mark.parametrize(("videos", "batch", "workers"), [(8, 3, 0), (7, 2, 2)],
                         ids=["divisible-no-workers", "remainder-2-workers"])
def test_two_ranks_read_disjoint_parts_each_sample_once_per_epoch(
    tmp_path: Path, videos: int, batch: int, workers: int
) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=videos, frames=3,
                        splits=("train", "val"))
    write_shards([data], tmp_path / "shards")
    n_train = len(read_index(tmp_path / "shards", "train"))
    n_val = len(read_index(tmp_path / "shards", "val"))
    ranks = _two_ranks(tmp_path, tmp_path / "shards", batch, workers)

    left_out = n_train % (2 * batch)  # a rank never takes a step the other cannot match
    assert (left_out == 0) == (videos == 8)
    orders = []
    for epoch in range(2):
        batches = [r["train"][epoch] for r in ranks]
        assert len(batches[0]) == len(batches[1]) > 0  # same number of steps on both ranks
        assert all(len(b) == batch for per in batches for b in per)  # whole batches only
        parts = [[i for b in per for i in b] for per in batches]
        assert not set(parts[0]) & set(parts[1])  # disjoint
        every = parts[0] + parts[1]
        assert len(every) == len(set(every))  # no sample twice in an epoch
        assert set(every) <= set(range(n_train))
        assert len(every) == n_train - left_out  # all of them when world x batch divides N
        orders.append(parts[0])
    assert orders[0] != orders[1]  # the shuffle changes with the epoch
    # validation: every sample exactly once across the ranks (nothing dropped)
    val = ranks[0]["val"] + ranks[1]["val"]
    assert sorted(val) == list(range(n_val))


def _val_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val_auc")]


def test_ddp_on_shards_validates_like_training_on_the_folder(tmp_path: Path) -> None:
    # LayerNorm model, no augmentation, the whole training split in one step (one half per
    # rank): the DDP gradient equals the one-process gradient whatever the order, so the
    # validation metrics after each epoch must agree with one-process training on the folder.
    # Two launches: Lightning starting 2 processes on this machine, and two "machines" (each
    # command started by hand with its NODE_RANK, as on a cluster without a scheduler).
    data = make_dataset(tmp_path / "d", videos_per_class=8, frames=1, splits=("train", "val"))
    write_shards([data], tmp_path / "shards")
    assert len(read_index(tmp_path / "shards", "train")) == 16
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: timm}\n")
    common = [
        "model.name=timm", "model.timm_name=test_convnext", "model.input_size=32",
        "data.num_workers=0", "data.augment.hflip=0", "train.epochs=2",
        "train.accelerator=cpu", "train.optimizer.lr=0.003", "log.tensorboard=false",
        "log.progress=false", "train.evaluate_test=false",
    ]
    cli = [sys.executable, "-m", "deepfake_detect", "train", "-c", str(config)]
    shards = [f"data.path=[{tmp_path / 'shards'}]", "train.strategy=ddp", "data.batch_size=8"]
    launches = {
        "folder": [[f"data.path=[{data}]", "train.devices=1", "data.batch_size=16"]],
        "devices": [[*shards, "train.devices=2"]],
        "nodes": [[*shards, "train.devices=1", "train.num_nodes=2"]] * 2,
    }
    runs = {}
    port = _free_port()
    for name, commands in launches.items():
        out = tmp_path / "runs" / name
        procs = []
        for node, extra in enumerate(commands):
            env = dict(ENV)
            if len(commands) > 1:
                env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node))
            procs.append(subprocess.Popen([*cli, "--out", str(out), *common, *extra], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
        runs[name] = _val_rows(out)
    # one run folder per launch: the second machine joined the first one's folder
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["devices", "folder", "nodes"]
    for name in ("devices", "nodes"):
        assert len(runs[name]) == len(runs["folder"]) == 2, name
        for folder, sharded in zip(runs["folder"], runs[name]):
            assert float(sharded["val_auc"]) == pytest.approx(float(folder["val_auc"]), abs=1e-6)
            assert float(sharded["val_loss"]) == pytest.approx(float(folder["val_loss"]),
                                                               rel=1e-4)


# train() with a callback that records the samples of every training batch; with a kill step
# the process SIGKILLs itself when that step is about to start (after the checkpoint before it).
TRAIN_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from deepfake_detect.config import load_config
    from deepfake_detect.training.train import train

    config, out, record, kill_at, resume = sys.argv[1:6]
    kill_at = int(kill_at)

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            with open(record, "a") as fh:
                fh.write(json.dumps([trainer.current_epoch, trainer.global_step,
                                     [int(i) for i in batch["index"]]]) + "\\n")

    train(load_config(base=json.loads(open(config).read())), out=out,
          resume=resume == "resume", callbacks=[Record()])
""")


def _run_train(tmp_path: Path, config: dict, out: Path, record: Path, kill_at: int = -1,
               resume: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    cfg = tmp_path / f"{out.name}.json"
    cfg.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, str(script), str(cfg), str(out), str(record), str(kill_at),
         "resume" if resume else "fresh"],
        env=ENV, capture_output=True, text=True, timeout=600)


def _records(path: Path) -> list[tuple[int, int, list[int]]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2], ids=["no-workers", "2-workers"])
def test_killed_mid_epoch_and_resumed_trains_on_the_same_samples(
    tmp_path: Path, workers: int
) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=6, frames=2, splits=("train", "val"))
    write_shards([data], tmp_path / "shards")
    n_train = len(read_index(tmp_path / "shards", "train"))  # 24: 6 steps of 4 per epoch
    config = tiny_config(tmp_path / "shards", tmp_path / "runs", epochs=2, evaluate_test=False,
                         checkpoint_every_n_steps=2)
    config["data"].update(batch_size=4, num_workers=workers)

    whole = _run_train(tmp_path, config, tmp_path / "whole", tmp_path / "whole.jsonl")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = _records(tmp_path / "whole.jsonl")
    assert len(expected) == 2 * (n_train // 4)
    for epoch in (0, 1):  # each epoch: every training sample once
        seen = [i for e, _, b in expected if e == epoch for i in b]
        assert sorted(seen) == list(range(n_train))

    # killed as step 3 of the first epoch starts: the checkpoint of step 2 is the newest
    killed = _run_train(tmp_path, config, tmp_path / "run", tmp_path / "first.jsonl", kill_at=3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    first = _records(tmp_path / "first.jsonl")
    assert [s for _, s, _ in first] == [0, 1, 2]
    resumed = _run_train(tmp_path, config, tmp_path / "run", tmp_path / "second.jsonl",
                         resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = _records(tmp_path / "second.jsonl")
    # step 2 was trained but not checkpointed: it is trained again, then the run goes on
    assert second[0][1] == 2
    assert first[:2] + second == expected


def test_checkpoint_every_n_steps_is_refused_for_a_folder(tmp_path: Path) -> None:
    from deepfake_detect.config import load_config
    from deepfake_detect.errors import ConfigError
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=3, splits=("train", "val"))
    config = tiny_config(data, tmp_path / "runs", epochs=1, checkpoint_every_n_steps=2)
    with pytest.raises(ConfigError, match="shard dataset.*deepfake-detect shard"):
        train(load_config(base=config), out=tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
