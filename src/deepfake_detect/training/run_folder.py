"""A training run folder: claimed and locked for the run's lifetime, checkpoints written
atomically, and resumed from its newest complete checkpoint with its saved config as the truth.

Rules (README "Safety"):
- ``--out`` must be new, empty, or a train folder that holds no checkpoint yet (a run whose
  start failed may be rerun into it); any other folder is refused.
- ``--resume`` continues from the newest complete checkpoint (``last.ckpt`` or ``best.ckpt``,
  whichever has seen more steps); a damaged one is passed over with a warning. A train folder
  without any checkpoint starts from the beginning.
- On resume the saved ``config.yaml`` is the truth: keys that only change how long or how
  visibly the run goes on (:data:`RESUMABLE_KEYS`) may change and are recorded in ``run.json``;
  any other change is refused with the list of differences.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from deepfake_detect.errors import ConfigError
from deepfake_detect.outputs import RunLock, atomic_target, claim_folder

CHECKPOINTS = "checkpoints"
CHECKPOINT_NAMES = ("last.ckpt", "best.ckpt")
# Keys that may differ between a run and its resume: they do not change what the model learns
# from the steps already taken, only how long training goes on and how it is shown.
RESUMABLE_KEYS = (
    "train.epochs", "train.early_stopping_patience", "train.evaluate_test",
    "train.checkpoint_every_n_steps", "data.num_workers",
    "data.eval_batch_size", "log.progress", "log.every_n_steps", "eval.plots", "output_dir",
    "name",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed into place, so a kill
    during a save leaves the previous checkpoint whole (and the mode follows the umask)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_target(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_progress(path: Path) -> tuple[int, int] | None:
    """(global_step, epoch) of a complete Lightning checkpoint; None if it is truncated,
    damaged or not a training checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch files are zip archives: a cut one fails here
            if archive.testzip() is not None:
                return None
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"]), int(ckpt["epoch"])
    except Exception:  # noqa: BLE001 - any failure means: not usable for resuming
        return None


def newest_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The complete checkpoint with the most steps in ``run_dir/checkpoints``, and warnings
    about the ones passed over."""
    notes: list[str] = []
    best: tuple[tuple[int, int], Path] | None = None
    for name in CHECKPOINT_NAMES:
        path = run_dir / CHECKPOINTS / name
        if not path.is_file():
            continue
        progress = checkpoint_progress(path)
        if progress is None:
            notes.append(f"{path} is incomplete or damaged; passed over")
            continue
        if best is None or progress > best[0]:
            best = (progress, path)
    if best is not None and notes:
        notes.append(f"resuming from {best[1]} (epoch {best[0][1]}, step {best[0][0]})")
    return (best[1] if best else None), notes


def _has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(folder.glob("*.ckpt"))


@dataclass
class RunFolder:
    path: Path
    checkpoint: Path | None  # resume from here; None: a fresh start
    lock: RunLock | None
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _target(out: Path | None, resume: bool | str | Path) -> Path | None:
    """The run folder: ``out``, or the one named by ``resume`` (a folder or a checkpoint in it)."""
    if resume and not isinstance(resume, bool):
        given = Path(resume)
        return given.parent.parent if given.is_file() and given.parent.name == CHECKPOINTS else (
            given.parent if given.is_file() else given)
    return out


def join_run_folder(out: Path | None, resume: bool | str | Path) -> RunFolder:
    """The run folder of a distributed launch as a process other than the first sees it: the
    first claims and locks it; the others (on this machine or another one sharing the folder)
    only read from it and write nothing there themselves (Lightning writes from rank 0)."""
    out = _target(out, resume)
    if out is None:
        raise ConfigError(
            "a distributed launch needs the run folder on every process: pass the same --out "
            "RUN_DIR (on a folder all machines share) to the command on every node"
        )
    return RunFolder(out, newest_checkpoint(out)[0] if resume else None, None)


def open_run_folder(out: Path | None, resume: bool | str | Path) -> RunFolder:
    """Claim and lock the run folder ``out`` (or the one named by ``resume``) for ``train``."""
    out = _target(out, resume)
    assert out is not None, "a run folder or a folder to resume is needed"
    if resume and not (out / "config.yaml").is_file():
        raise ConfigError(
            f"cannot resume: {out} is not a train run folder (no config.yaml and no "
            f"{CHECKPOINTS}/last.ckpt). Resume takes the run folder of an earlier "
            "`deepfake-detect train`"
        )
    lock = RunLock(claim_folder(out, "train"), "train").acquire()
    try:
        checkpoint, notes = newest_checkpoint(out) if resume else (None, [])
        if resume and checkpoint is None:
            if _has_checkpoints(out):
                raise ConfigError(f"cannot resume {out}: every checkpoint in {out / CHECKPOINTS} is "
                                  "incomplete or damaged; start a new run with another --out")
            notes.append(f"{out} holds no checkpoint yet: training starts from the beginning")
        elif not resume and _has_checkpoints(out):
            raise ConfigError(f"{out} is not empty (it holds a trained run): choose a new --out, "
                              "or add --resume to continue that run")
        return RunFolder(out, checkpoint, lock, notes)
    except BaseException:
        lock.release()
        raise


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty section stays one key)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(saved: dict, given: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The keys whose values differ between the saved and the given config, split into those a
    resume may change and those it may not: ``{key: (saved, given)}`` each."""
    old, new = flatten(saved), flatten(given)
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)}
    allowed = {k: v for k, v in diffs.items() if k in RESUMABLE_KEYS}
    refused = {k: v for k, v in diffs.items() if k not in RESUMABLE_KEYS}
    return allowed, refused


def check_resume_config(run_dir: Path, given: dict) -> dict[str, tuple]:
    """Raise ConfigError if ``given`` differs from the run's saved config in a key a resume may
    not change; return the allowed changes."""
    from deepfake_detect.config.loading import read_yaml

    saved = read_yaml(run_dir / "config.yaml")
    allowed, refused = resume_changes(saved, json.loads(json.dumps(given, default=str)))
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                           ((k, *v) for k, v in list(refused.items())[:8]))
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise ConfigError(
            f"cannot resume {run_dir} with a changed config: {listed}{more}. The saved "
            f"{run_dir / 'config.yaml'} is the truth on resume (pass it as -c, or leave -c out); "
            f"keys that may change: {', '.join(RESUMABLE_KEYS)}"
        )
    return allowed
