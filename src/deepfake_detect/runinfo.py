"""Facts about this installation recorded in every run folder and checkpoint."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path

from deepfake_detect import __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the deepfake-detect source tree, 'unknown' outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
        if commit:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here, capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment() -> dict[str, str]:
    import torch

    return {
        "deepfake_detect": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
    }


# Processes of a distributed launch find rank 0's run folder here.
RUN_DIR_ENV = "DEEPFAKE_DETECT_RUN_DIR"


def create_run_dir(parent: str | Path, name: str, kind: str = "") -> Path:
    """A new, unique run folder ``parent/<name>[-<kind>]-<YYYYmmdd-HHMMSS>[-n]``.

    """
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / "-".join(p for p in (name, kind, stamp) if p)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_run_info(run_dir: Path, config: dict | None = None, **extra) -> None:
    """Write ``config.yaml`` (the resolved config) and ``run.json`` (version, commit, command
    line; ``tool_command`` names the deepfake-detect command that owns the folder)."""
    import json
    import time

    import yaml

    from deepfake_detect.outputs import atomic_write

    if config is not None:
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    info = {**environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write(run_dir / "run.json", json.dumps(info, indent=2, default=str))
