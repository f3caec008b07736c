"""The unit every data source produces: one labelled image with its video and split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REAL, FAKE = 0, 1
CLASS_NAMES = ("real", "fake")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 fake
    video: str  # true video id, unique within a dataset; a lone image is its own video
    split: str | None = None  # "train" | "val" | "test" | None (to be assigned)
    dataset: str = ""  # name of the dataset the sample came from
    # frame of the video the crop was cut from (several faces may share one); None when unknown
    frame: str | None = None
    # manipulation method / generator / source the sample belongs to (e.g. "Deepfakes"); None:
    # no group (reals usually have none)
    group: str | None = None
