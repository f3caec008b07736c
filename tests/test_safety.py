"""Safe on real data (issue 14): names from data stay inside --out, outputs never replace inputs
or foreign files, a run folder is locked for one run, workers die with their parent, resume
never goes wrong, a failed start leaves a reusable folder, modes follow the umask.

Where an item is about processes and signals the tests start real ``python -m deepfake_detect``
processes and kill them with real signals."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
import yaml
from conftest import make_dataset, square_frames, tiny_config, write_video

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import Face, FaceDetector
from deepfake_detect.data.prepare import prepare
from deepfake_detect.errors import ConfigError, OutputError
from deepfake_detect.outputs import (
    LOCK_FILE,
    RunLock,
    atomic_write,
    inside,
    safe_name,
    safe_relpath,
)
from deepfake_detect.runinfo import RUN_DIR_ENV
from deepfake_detect.training.run_folder import (
    AtomicCheckpointIO,
    checkpoint_progress,
    newest_checkpoint,
)
from deepfake_detect.training.train import train

CLI = [sys.executable, "-m", "deepfake_detect"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop(RUN_DIR_ENV, None)  # set by in-process train(); a subprocess must choose its own
    env.pop("LOCAL_RANK", None)
    return env


# --------------------------------------------------------------------------- helpers


class CenterFace(FaceDetector):
    """Stand-in face detector for real media: the centre square of every frame is the face."""

    name = "center"

    def detect(self, frames):
        out = []
        for img in frames:
            h, w = img.shape[:2]
            s = min(h, w) / 2
            box = np.array([w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2, h / 2 + s / 2], np.float32)
            out.append([Face(box=box, score=0.99)])
        return out


def _settings(**crop) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {"frames": {"count": 2}, "detect": {"batch_size": 4}, "crop": {"size": 32, **crop}}
    )


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry below ``root`` (not following links) -> a digest of its content."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames:
            path = here / name
            if skip is not None and path == skip:
                continue
            found[str(path.relative_to(root))] = "link" if path.is_symlink() else "dir"
        for name in filenames:
            path = here / name
            rel = str(path.relative_to(root))
            found[rel] = ("link:" + os.readlink(path)) if path.is_symlink() else (
                hashlib.sha1(path.read_bytes()).hexdigest())
    return found


def _fast_config(data: Path, tmp: Path, **train_keys) -> dict:
    """tiny_config without test evaluation and plots: a run takes well under a second."""
    cfg = tiny_config(data, tmp / "runs", **{"evaluate_test": False, **train_keys})
    cfg["eval"] = {"plots": False}
    return cfg


def _train(cfg: dict, out: Path, resume: bool = False):
    return train(load_config(base=cfg), out=out, resume=resume)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _lock_holder(folder: Path) -> dict:
    try:
        return json.loads((folder / LOCK_FILE).read_text("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str,
              log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has ended


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            parents.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_all(pids) -> None:
    """End the processes this test started (by pid), if still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@contextlib.contextmanager
def _umask(mask: int):
    """Run the block with umask ``mask``, as a process started with it would (the tool may have
    read the umask of this test process earlier)."""
    from deepfake_detect import outputs

    old = os.umask(mask)
    cached = getattr(outputs, "_UMASK", None)
    if hasattr(outputs, "_UMASK"):
        outputs._UMASK = None
    try:
        yield
    finally:
        os.umask(old)
        if hasattr(outputs, "_UMASK"):
            outputs._UMASK = cached


@pytest.fixture
def cli(capsys):
    """Run the CLI's entry point in this process: (exit code, stdout + stderr on one line)."""
    from deepfake_detect.cli.app import main

    def run(*args) -> tuple[int, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, " ".join((out.out + out.err).split())

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny run (trained with umask 022): its data, config and run folder."""
    tmp = tmp_path_factory.mktemp("safety")
    data = make_dataset(tmp / "toy", videos_per_class=4, frames=2, splits=("train", "val", "test"))
    cfg = _fast_config(data, tmp, epochs=1)
    with _umask(0o022):
        result = _train(cfg, tmp / "run")
    return {"data": data, "cfg": cfg, "run": result.run_dir}


@pytest.fixture
def clip(tmp_path: Path, shared: Path) -> Path:
    """A real (small) video in its own input folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    return Path(shutil.copy(shared / "media" / "videos" / "hamilton_360p.mp4", folder / "clip.mp4"))


# --------------------------------------------------------------------------- 1. path traversal


def test_safe_relpath_and_safe_name_never_climb_out():
    assert safe_relpath("../../../victim") == PurePosixPath("victim")
    assert safe_relpath("/etc/passwd") == PurePosixPath("etc/passwd")
    assert safe_relpath("..\\..\\windows\\system32") == PurePosixPath("windows/system32")
    assert safe_relpath("C:\\Users\\x") == PurePosixPath("C_/Users/x")
    assert safe_relpath("a/./b/../c") == PurePosixPath("a/b/c")
    assert safe_relpath("") == safe_relpath("..") == safe_relpath("/") == PurePosixPath("_")
    assert safe_relpath(".hidden/x") == PurePosixPath("hidden/x")
    for value in ("../../x", "/abs/p", "..\\..\\y", "a/../../..", "\x00../\n.."):
        rel = safe_relpath(value)
        assert not rel.is_absolute() and ".." not in rel.parts, value
    assert safe_name("..") == "_" and safe_name("a/b") == "a_b" and safe_name("a\\b") == "a_b"
    assert safe_name("x" * 300) == "x" * 128


def test_inside_refuses_dotdot_absolute_and_links_out(tmp_path: Path):
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "victim"
    outside.mkdir()
    assert inside(root, "sub/a.png") == root / "sub" / "a.png"
    assert inside(root, "new/deeper/x") == root / "new" / "deeper" / "x"  # need not exist
    for bad in ("../victim/x", "sub/../../victim", "/etc/passwd", str(outside / "x")):
        with pytest.raises(OutputError, match="outside the output folder"):
            inside(root, bad)
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError, match="outside the output folder"):
        inside(root, "link/x.png")
    with pytest.raises(OutputError):
        inside(root, "link")
    (root / "ok").symlink_to(root / "sub", target_is_directory=True)  # a link that stays in
    assert inside(root, "ok/x") == root / "ok" / "x"


def test_prepare_manifest_names_cannot_leave_out(tmp_path: Path, clip: Path, shared: Path):
    photo = Path(shutil.copy(shared / "media" / "faces" / "two_people.jpg", clip.parent / "face.jpg"))
    manifest = clip.parent / "list.csv"
    manifest.write_text(
        "path,label,video\n"
        f"{clip.name},real,../../../victim\n"
        f"{photo.name},fake,../../../escaped\n"
        f"{clip.name},fake,/abs/clip\n"
    )
    victim = tmp_path / "victim"  # where out/real/../../../victim would lead
    victim.mkdir()
    for name in ("keep.txt", "00000.png", "00001.png"):
        (victim / name).write_bytes(b"user data " + name.encode())
    out = tmp_path / "a" / "out"
    before = _tree(tmp_path)

    report = prepare([manifest], out, _settings(), progress=False, detector=CenterFace())

    assert report.faces == 2 + 1 + 2
    after = _tree(tmp_path, skip=out)
    assert {k: v for k, v in after.items() if not k.startswith("a")} == before, "wrote outside --out"
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not (tmp_path.parent / "victim").exists()
    rows = [r for r in _rows(out / "manifest.csv") if r["status"] == "ok"]
    folders = {str(PurePosixPath(r["path"]).parent) for r in rows}
    assert folders == {"real/victim", "fake/escaped", "fake/abs/clip"}
    for r in rows:
        assert (out / r["path"]).resolve().is_relative_to(out.resolve()) and (out / r["path"]).is_file()

    # A rerun with other settings redoes every unit and removes its earlier crops. Plant a link
    # out of the folder where the crops were, and a journal naming a file outside: the redo may
    # neither write through the link nor delete anything it names.
    shutil.rmtree(out / "real" / "victim")
    (out / "real" / "victim").symlink_to(victim, target_is_directory=True)
    key = next(p.stem for p in (out / ".parts").glob("*.json") if "../../../victim" in p.read_text())
    (out / ".parts" / f"{key}.pending").write_text("../../victim/keep.txt\nreal/victim/00000.png\n")
    prepare([manifest], out, _settings(size=48), progress=False, detector=CenterFace())
    assert _tree(victim) == {k.removeprefix("victim/"): v for k, v in before.items()
                             if k.startswith("victim/")}
    assert (victim / "keep.txt").read_bytes() == b"user data keep.txt"


# --------------------------------------------------------------------------- 2. prepare keeps what it did not make


def test_prepare_refuses_out_equal_to_its_input_and_keeps_user_folders(tmp_path: Path, cli):
    data = tmp_path / "in"
    write_video(data / "real" / "clip1.mp4", square_frames(6))
    (data / "real" / "clip1").mkdir()
    (data / "real" / "clip1" / "notes.txt").write_text("mine")
    (data / "real" / "clip1" / "00000.png").write_bytes(b"also mine")
    before = _tree(data)
    for extra in ([], ["--force"]):
        code, text = cli("prepare", data, "--out", data, "--frames", "2", "--label", "real", *extra)
        assert code != 0 and "holds the input" in text, text
        assert _tree(data) == before
    # the user's folder beside the video is not a prepare output either
    code, text = cli("prepare", data / "real" / "clip1.mp4", "--out", data / "real" / "clip1",
                     "--frames", "2")
    assert code != 0 and "not empty" in text, text
    assert _tree(data) == before


def test_prepare_into_a_subfolder_of_its_input_leaves_user_files(tmp_path: Path):
    data = tmp_path / "in"
    write_video(data / "real" / "clip1.mp4", square_frames(6))
    (data / "real" / "clip1").mkdir()
    (data / "real" / "clip1" / "notes.txt").write_text("mine")
    out = data / "faces"
    first = prepare([data], out, _settings(), progress=False, detector=CenterFace())
    again = prepare([data], out, _settings(size=48), progress=False, detector=CenterFace())
    assert first.faces == again.faces == 2  # the crops in --out are never inputs
    assert any("left out" in n for n in again.notes)
    assert (data / "real" / "clip1" / "notes.txt").read_text() == "mine"
    assert (data / "real" / "clip1.mp4").is_file()


def test_second_input_set_is_merged_into_the_manifest(tmp_path: Path, clip: Path, shared: Path):
    out = tmp_path / "faces"
    other = tmp_path / "other"
    other.mkdir()
    photo = Path(shutil.copy(shared / "media" / "faces" / "paul_rudd.jpg", other / "paul.jpg"))
    prepare([clip], out, _settings(), label=0, progress=False, detector=CenterFace())
    first = {r["path"] for r in _rows(out / "manifest.csv")}
    assert len(first) == 2
    report = prepare([photo], out, _settings(), label=1, progress=False, detector=CenterFace())
    rows = _rows(out / "manifest.csv")
    assert first <= {r["path"] for r in rows}, "the first run's rows were dropped"
    assert {r["video"] for r in rows} == {"clip", "paul"}
    assert all((out / r["path"]).is_file() for r in rows)
    assert any("earlier units" in n for n in report.notes)
    inputs = json.loads((out / "prepare.json").read_text())["inputs"]
    assert inputs == [str(clip), str(photo)]


def test_prepare_refuses_a_foreign_non_empty_out(tmp_path: Path, clip: Path, cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("do not touch")
    with pytest.raises(OutputError, match="not empty"):
        prepare([clip], out, _settings(), label=0, progress=False, detector=CenterFace())
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    code, text = cli("prepare", clip, "--out", out, "--label", "real", "--frames", "1")
    assert code != 0 and "not empty" in text
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_prepare_force_writes_beside_the_users_files(tmp_path: Path, clip: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("do not touch")
    prepare([clip], out, _settings(), label=0, progress=False, detector=CenterFace(), force=True)
    assert (out / "thesis.txt").read_text() == "do not touch" and (out / "manifest.csv").is_file()


# --------------------------------------------------------------------------- 3. outputs never overwrite inputs


def test_predict_out_naming_an_input_is_refused(trained, tmp_path: Path, cli):
    image = tmp_path / "face.png"
    shutil.copy(next((trained["data"] / "test" / "fake").glob("*.png")), image)
    original = image.read_bytes()
    model = trained["run"] / "model.safetensors"
    for option in ("--out", "--json", "--per-frame"):
        for extra in ([], ["--force"]):
            code, text = cli("predict", "--checkpoint", model, image, option, image, *extra)
            assert code != 0 and "one of the inputs" in text, (option, extra, text)
            assert image.read_bytes() == original
    code, text = cli("predict", "--checkpoint", model, image, "--out", model, "--force")
    assert code != 0 and model.is_file()
    # a new file is fine
    code, text = cli("predict", "--checkpoint", model, image, "--out", tmp_path / "preds.csv")
    assert code == 0, text
    assert image.read_bytes() == original


def test_predict_out_naming_a_file_inside_an_input_folder_is_refused(trained, tmp_path: Path, cli):
    folder = tmp_path / "faces"
    shutil.copytree(trained["data"] / "test" / "fake", folder)
    image = min(folder.glob("*.png"))
    original = image.read_bytes()
    model = trained["run"] / "model.safetensors"
    code, _ = cli("predict", "--checkpoint", model, folder, "--out", image)
    assert code != 0 and image.read_bytes() == original
    # --force replaces a user's file, never an input (the --force help says so)
    code, _ = cli("predict", "--checkpoint", model, folder, "--out", image, "--force")
    assert image.read_bytes() == original, "predict --force overwrote one of the images it scored"
    assert code != 0


def test_export_replaces_a_user_file_only_with_force(trained, tmp_path: Path, cli):
    from safetensors import safe_open

    target = tmp_path / "existing.csv"
    target.write_text("name,score\nalice,1\n")
    ckpt = trained["run"] / "checkpoints" / "best.ckpt"
    code, text = cli("export", "--checkpoint", ckpt, "--out", target)
    assert code != 0 and "--force" in text, text
    assert target.read_text() == "name,score\nalice,1\n"
    code, text = cli("export", "--checkpoint", ckpt, "--out", target, "--force")
    assert code == 0, text
    with safe_open(str(target), framework="pt") as fh:
        assert "deepfake_detect" in (fh.metadata() or {})
    # never the checkpoint it reads, even with --force
    before = ckpt.read_bytes()
    code, text = cli("export", "--checkpoint", ckpt, "--out", ckpt, "--force")
    assert code != 0 and ckpt.read_bytes() == before


def test_evaluate_refuses_a_folder_holding_a_user_config(trained, tmp_path: Path, cli):
    out = tmp_path / "experiments"
    out.mkdir()
    (out / "config.yaml").write_text("my: own settings\n")
    model = trained["run"] / "model.safetensors"
    code, text = cli("evaluate", "--checkpoint", model, "--data", trained["data"], "--out", out,
                     "--no-plots", "--workers", "0")
    assert code != 0, text
    assert (out / "config.yaml").read_text() == "my: own settings\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    # a train run folder is not an evaluate folder either
    config = trained["run"] / "config.yaml"
    before = config.read_bytes()
    code, text = cli("evaluate", "--checkpoint", model, "--data", trained["data"],
                     "--out", trained["run"], "--no-plots", "--workers", "0")
    assert code != 0 and config.read_bytes() == before, text


# --------------------------------------------------------------------------- 4. one run per folder


def test_a_running_train_locks_its_folder_until_killed(tmp_path: Path, cli):
    """A real `train` process holds --out: a second train is refused naming its pid; a SIGKILL
    mid-run leaves only checkpoints that load; the lock dies with the process and --resume
    continues. The process runs with umask 002: its files are group-writable (item 12)."""
    data = make_dataset(tmp_path / "toy", videos_per_class=4, frames=2, splits=("train", "val"))
    cfg = _fast_config(data, tmp_path, epochs=1000)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([*CLI, "train", "-c", str(config), "--out", str(run)], env=_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                umask=0o002)
    try:
        _wait_for(lambda: _lock_holder(run).get("pid") == proc.pid and (run / "run.json").is_file(),
                  proc, 120, "the lock and run.json", log)
        assert _lock_holder(run)["command"] == "train"
        short = {**cfg, "train": {**cfg["train"], "epochs": 1}}
        with pytest.raises(OutputError, match=rf"in use by another deepfake-detect run \(pid {proc.pid},"):
            _train(short, run)
        with pytest.raises(OutputError, match=rf"pid {proc.pid}\b"):
            _train(short, run, resume=True)
        code, text = cli("train", "-c", config, "--out", run, "train.epochs=1")
        assert code != 0 and f"pid {proc.pid}" in text, text
        # prepare into a train folder: refused too
        with pytest.raises(OutputError, match="`train` folder"):
            prepare([data], run, _settings(), progress=False, detector=CenterFace())

        # let it write a few checkpoints, then kill it while it goes on saving
        last = run / "checkpoints" / "last.ckpt"
        _wait_for(last.is_file, proc, 120, "the first checkpoint", log)
        seen = {last.stat().st_ino}
        _wait_for(lambda: seen.add(last.stat().st_ino) or len(seen) >= 3, proc, 120,
                  "two more checkpoints", log)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        _kill_all([proc.pid])
        proc.wait(timeout=30)

    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"}
    for path in ckpts:  # never half a checkpoint
        assert int(_ckpt(path)["epoch"]) >= 0, path
        assert checkpoint_progress(path) is not None
        assert path.stat().st_mode & 0o777 == 0o664, (path, oct(path.stat().st_mode))
    for name in ("config.yaml", "run.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o664, name

    # the lock died with the process: a new run takes it, and --resume continues the run
    RunLock(run, "train").acquire().release()
    epoch = int(_ckpt(newest_checkpoint(run)[0])["epoch"])
    code, text = cli("train", "--out", run, "--resume", f"train.epochs={epoch + 2}")
    assert code == 0, text
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"].endswith(".ckpt")
    assert info["resume_changes"] == {"train.epochs": [1000, epoch + 2]}
    assert int(_ckpt(run / "checkpoints" / "last.ckpt")["epoch"]) == epoch + 1


def _start_prepare(tmp_path: Path, shared: Path, out: Path, workers: int) -> tuple[subprocess.Popen, Path]:
    """A real `prepare` (MTCNN on CPU) over the shared videos, long enough to be caught running."""
    videos = sorted((shared / "media" / "videos").glob("*.mp4"))
    log = tmp_path / "prepare.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [*CLI, "prepare", *map(str, videos), "--label", "real", "--out", str(out),
             "--workers", str(workers), "--frames", "64", "--detect-size", "640",
             "--device", "cpu", "--size", "64"],
            env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc, log


def test_a_running_prepare_locks_its_folder_until_killed(tmp_path: Path, shared: Path):
    out = tmp_path / "faces"
    proc, log = _start_prepare(tmp_path, shared, out, workers=1)
    photo = shared / "media" / "faces" / "two_people.jpg"
    try:
        _wait_for(lambda: _lock_holder(out).get("pid") == proc.pid, proc, 120, "the lock", log)
        assert _lock_holder(out)["command"] == "prepare"
        with pytest.raises(OutputError, match=rf"in use by another deepfake-detect run \(pid {proc.pid},"):
            prepare([photo], out, _settings(), label=0, progress=False, detector=CenterFace())
        assert proc.poll() is None, "prepare ended before the check: give it more work"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all([proc.pid, *_descendants(proc.pid)])
        proc.wait(timeout=30)
    RunLock(out, "prepare").acquire().release()
    same = PrepareConfig.model_validate({  # the settings of the killed run: its units may stay
        "frames": {"count": 64}, "detect": {"detect_size": 640, "device": "cpu"}, "crop": {"size": 64},
    })
    report = prepare([photo], out, same, label=0, progress=False, detector=CenterFace())
    assert report.faces == 1


# --------------------------------------------------------------------------- 5. workers die with their parent


def test_prepare_workers_die_with_a_killed_parent(tmp_path: Path, shared: Path):
    out = tmp_path / "faces"
    proc, log = _start_prepare(tmp_path, shared, out, workers=2)
    family: list[int] = []
    try:
        def working() -> bool:
            workers = [p for p in _descendants(proc.pid) if "spawn_main" in _cmdline(p)]
            # a unit under way: its journal lists crops being written
            return len(workers) >= 2 and any((out / ".parts").glob("*.pending"))

        _wait_for(working, proc, 180, "two workers at work", log)
        family = _descendants(proc.pid)
        workers = [p for p in family if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, [(_cmdline(p), p) for p in family]
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(p) for p in family):
            time.sleep(0.1)
        left = [(p, _cmdline(p)) for p in family if _alive(p)]
        assert not left, f"processes outlived their killed parent: {left}"
    finally:
        _kill_all([proc.pid, *family])
        proc.wait(timeout=30)
    # no survivor holds the folder's lock
    RunLock(out, "prepare").acquire().release()


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_prepare_workers_below_one_are_rejected(tmp_path: Path, clip: Path, cli, workers):
    code, text = cli("prepare", clip, "--out", tmp_path / "faces", "--workers", workers)
    assert code == 2 and "--workers" in text, text
    assert not (tmp_path / "faces").exists()


# --------------------------------------------------------------------------- 6. resume


def test_resume_from_best_when_last_is_missing(tmp_path: Path, toy_dataset: Path):
    cfg = _fast_config(toy_dataset, tmp_path, epochs=1)
    run = _train(cfg, tmp_path / "run").run_dir
    (run / "checkpoints" / "last.ckpt").unlink()  # killed before last.ckpt was written
    steps = int(_ckpt(run / "checkpoints" / "best.ckpt")["global_step"])
    _train({**cfg, "train": {**cfg["train"], "epochs": 2}}, run, resume=True)
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"] == str(run / "checkpoints" / "best.ckpt")
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert int(last["epoch"]) == 1 and int(last["global_step"]) == 2 * steps


def test_resume_passes_over_a_truncated_last_checkpoint(tmp_path: Path, toy_dataset: Path, capsys):
    cfg = _fast_config(toy_dataset, tmp_path, epochs=1)
    run = _train(cfg, tmp_path / "run").run_dir
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert checkpoint_progress(last) is None
    found, notes = newest_checkpoint(run)
    assert found == run / "checkpoints" / "best.ckpt"
    assert any("incomplete or damaged" in n for n in notes)
    capsys.readouterr()
    _train({**cfg, "train": {**cfg["train"], "epochs": 2}}, run, resume=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "incomplete or damaged" in err and "passed over" in err
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"] == str(run / "checkpoints" / "best.ckpt")
    assert int(_ckpt(last)["epoch"]) == 1  # a whole last.ckpt again
    # with no complete checkpoint at all, resume is refused rather than starting over
    for path in (run / "checkpoints").glob("*.ckpt"):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="incomplete or damaged"):
        _train(cfg, run, resume=True)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "config.yaml", run / "run.json",
                                               run / "checkpoints" / "last.ckpt")}


def test_resume_with_another_learning_rate_is_refused(tmp_path: Path, toy_dataset: Path, cli):
    cfg = _fast_config(toy_dataset, tmp_path, epochs=1)
    run = _train(cfg, tmp_path / "run").run_dir
    before = _snapshot(run)
    code, text = cli("train", "--out", run, "--resume", "train.epochs=2", "train.optimizer.lr=0.1")
    assert code != 0 and "train.optimizer.lr" in text and "0.003 -> 0.1" in text, text
    assert "train.epochs" not in text.split("keys that may change")[0]  # only the refused keys
    assert _snapshot(run) == before
    code, text = cli("train", "--out", run, "--resume", "--lr", "0.1")
    assert code != 0 and "train.optimizer.lr" in text, text
    assert _snapshot(run) == before


def test_resume_with_another_architecture_is_refused(tmp_path: Path, toy_dataset: Path, cli):
    cfg = _fast_config(toy_dataset, tmp_path, epochs=1)
    run = _train(cfg, tmp_path / "run").run_dir
    before = _snapshot(run)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "timm_name": "test_efficientnet"}}))
    code, text = cli("train", "-c", other, "--out", run, "--resume")
    assert code != 0 and "model.timm_name" in text and "test_efficientnet" in text, text
    assert _snapshot(run) == before
    code, text = cli("train", "--out", run, "--resume", "model.name=dual_stream")
    assert code != 0, text
    assert _snapshot(run) == before


def test_resume_with_more_epochs_is_recorded(tmp_path: Path, toy_dataset: Path, cli):
    cfg = _fast_config(toy_dataset, tmp_path, epochs=1)
    run = _train(cfg, tmp_path / "run").run_dir
    saved = (run / "config.yaml").read_text()
    code, text = cli("train", "--out", run, "--resume", "train.epochs=2", "log.progress=false")
    assert code == 0, text
    assert "train.epochs changes from 1 to 2" in text
    info = json.loads((run / "run.json").read_text())
    assert info["resume_changes"] == {"train.epochs": [1, 2]}
    assert info["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert int(_ckpt(run / "checkpoints" / "last.ckpt")["epoch"]) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert yaml.safe_load(saved)["train"]["epochs"] == 1


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "global_step": 5, "w": torch.ones(3)}, path)
    io.save_checkpoint({"epoch": 1, "global_step": 10, "w": torch.ones(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert checkpoint_progress(path) == (10, 1)
    with _umask(0o022):
        io.save_checkpoint({"epoch": 1, "global_step": 10}, path)
    assert path.stat().st_mode & 0o777 == 0o644

    def dies_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"epoch": 2, "global_step": 15}, path)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "a temporary file was left"
    assert checkpoint_progress(path) == (10, 1)


# --------------------------------------------------------------------------- 7. a failed start


def test_a_failed_start_leaves_a_reusable_folder(tmp_path: Path, toy_dataset: Path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_fast_config(empty, tmp_path, epochs=1)))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_fast_config(toy_dataset, tmp_path, epochs=1)))
    run = tmp_path / "run"
    code, text = cli("train", "-c", bad, "--out", run)
    assert code != 0 and run.is_dir(), text
    code, text = cli("train", "-c", good, "--out", run)
    assert code == 0 and "not empty" not in text, text
    assert (run / "model.safetensors").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == [str(toy_dataset)]


def test_resume_of_a_failed_start_starts_from_the_beginning(tmp_path: Path, cli):
    data = tmp_path / "later"
    data.mkdir()  # the data is not there yet
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_fast_config(data, tmp_path, epochs=1)))
    run = tmp_path / "run"
    code, text = cli("train", "-c", config, "--out", run)
    assert code != 0, text
    make_dataset(data, videos_per_class=4, frames=2, splits=("train", "val"))
    code, text = cli("train", "--out", run, "--resume")
    assert code == 0, text
    assert "starts from the beginning" in text
    info = json.loads((run / "run.json").read_text())
    assert info.get("resumed_from") is None
    assert int(_ckpt(run / "checkpoints" / "last.ckpt")["epoch"]) == 0


# --------------------------------------------------------------------------- 12. modes follow the umask


def test_train_and_export_outputs_follow_umask_022(trained, tmp_path: Path, cli):
    run = trained["run"]
    for name in ("model.safetensors", "config.yaml", "run.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, (name, oct((run / name).stat().st_mode))
    with _umask(0o022):
        code, text = cli("export", "--checkpoint", run / "checkpoints" / "best.ckpt",
                         "--out", tmp_path / "m.safetensors")
    assert code == 0, text
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_export_in_a_process_with_umask_002_is_group_writable(trained, tmp_path: Path):
    target = tmp_path / "shared.safetensors"
    proc = subprocess.run(
        [*CLI, "export", "--checkpoint", str(trained["run"] / "checkpoints" / "best.ckpt"),
         "--out", str(target)],
        env=_env(), capture_output=True, text=True, timeout=300, umask=0o002, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert target.stat().st_mode & 0o777 == 0o664, oct(target.stat().st_mode)


@pytest.mark.parametrize("mask", [0o077, 0o002])
def test_a_umask_set_later_in_the_process_is_followed(tmp_path: Path, mask, monkeypatch):
    from deepfake_detect import outputs

    monkeypatch.setattr(outputs, "_UMASK", None, raising=False)  # as in a fresh process
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "before.json", "{}")  # the process has written files already
        os.umask(mask)
        path = atomic_write(tmp_path / "after.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask, oct(path.stat().st_mode)


def test_every_file_output_is_recognised_as_ours_so_a_rerun_may_replace_it(trained, tmp_path: Path, cli):
    """claim_file replaces only files it recognises as this tool's: each writer's output must
    be recognised (else a rerun would need --force), and a user's look-alike must not be."""
    from deepfake_detect.inference.predict import (
        Prediction,
        write_per_face,
        write_predictions,
        write_submission,
    )
    from deepfake_detect.outputs import written_by_tool

    rows = [Prediction("a.png", 1, 0.9, frames=1, faces=1), Prediction("b.png", None, None, "bad")]
    write_predictions(rows, tmp_path / "p.csv", tmp_path / "p.json")
    write_submission(rows, tmp_path / "s.csv")
    write_per_face([{"filename": "a.png", "frame": 0, "face": 0, "time": 0.0,
                     "box": [1, 2, 3, 4], "score": 0.9}], tmp_path / "f.csv")
    for name in ("p.csv", "p.json", "s.csv", "f.csv"):
        assert written_by_tool(tmp_path / name), name
    (tmp_path / "manifest.csv").write_text("path,label,video\na.png,real,a\n")
    (tmp_path / "user.json").write_text('{"name": "mine"}')
    (tmp_path / "user.png").write_bytes((trained["data"] / "test" / "fake").glob("*.png").__next__().read_bytes())
    for name in ("manifest.csv", "user.json", "user.png"):
        assert not written_by_tool(tmp_path / name), name
    # the CLI end to end: the same predict twice into the same files, no --force needed
    model = trained["run"] / "model.safetensors"
    image = next((trained["data"] / "test" / "fake").glob("*.png"))
    args = ("predict", "--checkpoint", model, image, "--out", tmp_path / "again.csv",
            "--json", tmp_path / "again.json", "--workers", "0")
    assert cli(*args)[0] == 0
    code, text = cli(*args)
    assert code == 0, text
    code, text = cli("export", "--checkpoint", model, "--out", tmp_path / "m.safetensors")
    assert code == 0 and cli("export", "--checkpoint", model, "--out", tmp_path / "m.safetensors")[0] == 0
