"""Where data lives: a local path, or a shard dataset's object-store URI (``s3://bucket/x``).

Nothing here imports litdata, so that commands on plain dataset folders never pay for it: a
data path is known to be a shard dataset by its scheme or by the marker file in its folder,
and only then is :mod:`deepfake_detect.data.shard_reader` loaded.
"""

from __future__ import annotations

from pathlib import Path

from deepfake_detect.config.schema import data_location
from deepfake_detect.errors import DataError

MARKER = "shards.json"  # written last by `deepfake-detect shard`: the folder is a shard dataset

Location = Path | str  # a local folder (Path) or an object-store URI (str)


def as_location(value: str | Path, what: str = "data.path") -> Location:
    """``value`` as a local Path or a URI string (see
    :func:`~deepfake_detect.config.schema.data_location`); a URI no store answers to is a
    one-line DataError naming ``what``."""
    try:
        return data_location(value)
    except ValueError as exc:
        raise DataError(f"{what} {exc}") from None


def is_remote(location: Location) -> bool:
    return isinstance(location, str) and "://" in location


def child(location: Location, *names: str) -> Location:
    """``location/names...``, a URI staying a URI."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *names])
    return Path(location).joinpath(*names)


def names_shards(location: Location) -> bool:
    """Whether a data path is a shard dataset: an object-store URI (only shard datasets are read
    from object storage) or a folder holding the marker; decided without reading litdata."""
    return is_remote(location) or (Path(location) / MARKER).is_file()
