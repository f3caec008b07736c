"""Reading a shard dataset written by :mod:`deepfake_detect.data.shards`, from a local folder
or from object storage (``s3://``, ``gs://``, ``azure://``): its marker, its per-split sample
index, a litdata ``StreamingDataset`` of its items for training, and samples that evaluation
scores by reading their items (:class:`ShardSample`), never by extracting files.

Object storage is reached the way litdata reaches it (its downloaders, boto3 for S3), with
the standard variables of each store (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...) and, when set,
``DEEPFAKE_DETECT_STORAGE_OPTIONS``: a JSON object handed to litdata as its
``storage_options`` (for S3 the keyword arguments of ``boto3.client``, e.g. ``endpoint_url``;
for Azure those of ``BlobServiceClient``, e.g. ``account_url`` and ``credential``). It is read
from the environment, never from a config file, so that no secret lands in a run's
``config.yaml``. litdata keeps its copy of remote chunks in the cache folder each caller names
(``cache_dir``); without one litdata would use ``~/.lightning/chunks``, so a remote dataset is
never opened without it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litdata import StreamingDataset

from deepfake_detect.data.locations import MARKER, Location, as_location, child, is_remote
from deepfake_detect.data.images import ImageLoadError, decode_rgb
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import DataError

FORMAT = 1
SPLITS = ("train", "val", "test")
STORAGE_OPTIONS_ENV = "DEEPFAKE_DETECT_STORAGE_OPTIONS"



def storage_options() -> dict[str, Any]:
    """litdata's ``storage_options`` from ``DEEPFAKE_DETECT_STORAGE_OPTIONS`` (empty when unset)."""
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    example = '\'{"endpoint_url": "https://minio.example.org:9000"}\''
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{STORAGE_OPTIONS_ENV} is not JSON ({exc}); give an object, e.g. "
                        f"{example}") from None
    if not isinstance(options, dict):
        raise DataError(f"{STORAGE_OPTIONS_ENV} must be a JSON object, e.g. {example}")
    return options


def _probe_options(uri: str) -> dict[str, Any]:
    """The storage options of the first look at a remote dataset. litdata's S3 client retries a
    failed request up to 1000 times, which is right while streaming a long training run (it
    must ride out a blip) but would leave a wrong or unreachable endpoint hanging for hours:
    the marker and sample index are read with a few retries and short timeouts instead."""
    options = storage_options()
    if uri.startswith("s3://") and "config" not in options:
        from botocore.config import Config

        options["config"] = Config(retries={"max_attempts": 3, "mode": "standard"},
                                   connect_timeout=10, read_timeout=60)
    return options


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _is_missing(exc: BaseException) -> bool:
    """A missing object (not a missing bucket, which is an error of its own)."""
    if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
        return True
    return type(exc).__name__ in ("NotFound", "BlobNotFound")  # google-cloud-storage


def _storage_problem(uri: str, what: str, exc: BaseException) -> str:
    """One line saying why ``uri`` could not be read and what to do about it."""
    name, code = type(exc).__name__, _error_code(exc)
    detail = (str(exc).strip().splitlines() or [name])[0]
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        fix = ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; "
               "GOOGLE_APPLICATION_CREDENTIALS for gs://), or pass them in "
               f"{STORAGE_OPTIONS_ENV}")
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                  "ConnectionClosedError", "ServiceRequestError") or isinstance(exc, OSError):
        fix = ("the object store cannot be reached: check the endpoint (AWS_ENDPOINT_URL, or "
               f"endpoint_url in {STORAGE_OPTIONS_ENV}) and the network")
    elif code == "NoSuchBucket":
        fix = "the bucket does not exist: check the URI"
    elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or \
            name in ("Forbidden", "ClientAuthenticationError"):
        fix = "access denied: check the credentials and the bucket's permissions"
    elif isinstance(exc, (ModuleNotFoundError, ImportError)):
        fix = "the client library of this object store is not installed"
    elif "BadScheme" in str(exc):
        # litdata fetches chunks with obstore when installed, and builds its S3 store without
        # allow_http: a plain http:// endpoint answers the index but not the chunks
        fix = "litdata fetches chunks over https only: give the object store an https:// endpoint"
    else:
        fix = "check the URI, the credentials and the endpoint"
    return f"{what} {uri}: cannot read it from object storage ({name}: {detail}); {fix}"


def _read_small(location: Location, *names: str, what: str) -> bytes | None:
    """The bytes of the small file ``location/names...`` of a shard folder (marker, sample
    index), or None when it is not there. A remote one is read with litdata's downloader for
    its scheme (the client and options its chunks are streamed with)."""
    target = child(location, *names)
    if not is_remote(location):
        try:
            return Path(target).read_bytes() if Path(target).is_file() else None
        except OSError as exc:
            raise DataError(f"{what} {target}: cannot be read ({exc.strerror or exc})") from None
    from litdata.streaming.downloader import get_downloader

    buffer = io.BytesIO()
    try:
        downloader = get_downloader(str(location), "", [], _probe_options(str(location)))
        downloader.download_fileobj(str(target), buffer)
    except Exception as exc:  # each store raises its own types; all become one line
        if _is_missing(exc):
            return None
        raise DataError(_storage_problem(str(location), what, exc)) from None
    return buffer.getvalue()


# --------------------------------------------------------------------------- marker and index


def shard_info(path: str | Path, *, what: str = "data.path") -> dict[str, Any] | None:
    """The ``shards.json`` of a shard dataset, or None when the local ``path`` is not one. A
    URI must name a shard dataset (only those are read from object storage): one that does
    not, or cannot be read, is a one-line DataError naming ``what``."""
    location = as_location(path, what)
    raw = _read_small(location, MARKER, what=what)
    info: Any = None
    if raw is not None:
        try:
            info = json.loads(raw.decode("utf-8"))
        except ValueError:
            info = None
    if not isinstance(info, dict) or info.get("deepfake_detect.shards") is None:
        if is_remote(location):
            raise DataError(
                f"{what} {location}: not a shard dataset (no valid {MARKER} there, or no such "
                "bucket); only shard "
                "datasets written by `deepfake-detect shard` can be read from object storage: "
                "upload the whole --out folder of `deepfake-detect shard` and name that folder, "
                "or give a local dataset folder"
            )
        return None
    if info["deepfake_detect.shards"] != FORMAT:
        raise DataError(f"{path}: shard format {info['deepfake_detect.shards']} is not the "
                        f"{FORMAT} this version reads; write it again with `deepfake-detect shard`")
    return info


def is_shard_folder(path: str | Path) -> bool:
    return shard_info(path) is not None


def check_chunks(location: Location) -> list[tuple[str, int, str]]:
    """The chunks of a local split that cannot be read whole: ``(file name, items, reason)``.
    index.json records each chunk's size and item count; a missing, truncated or overwritten
    chunk would otherwise stall litdata's reader or stop it mid-epoch. The check reads only
    sizes and each chunk's first 4 bytes (its item count). A remote split is not checked here."""
    if is_remote(location):
        return []
    folder = Path(location)
    try:
        index = json.loads((folder / "index.json").read_text("utf-8"))
        chunks, compressed = index["chunks"], index.get("config", {}).get("compression")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{folder / 'index.json'}: unreadable ({type(exc).__name__}); write "
                        "the shards again with `deepfake-detect shard`") from None
    bad = []
    for chunk in chunks:
        path, items = folder / str(chunk["filename"]), int(chunk.get("chunk_size") or 0)
        if not path.is_file():
            bad.append((path.name, items, "missing"))
            continue
        size, expected = path.stat().st_size, int(chunk["chunk_bytes"])
        if size != expected:
            bad.append((path.name, items, f"{size} bytes where index.json says {expected} "
                                          "(truncated or replaced)"))
            continue
        if compressed is None:  # an uncompressed chunk starts with its item count (uint32)
            with open(path, "rb") as fh:
                count = int.from_bytes(fh.read(4), "little")
            if count != items:
                bad.append((path.name, items, f"its header counts {count} items where "
                                              f"index.json says {items} (overwritten)"))
    return bad


def without_chunks(ds: StreamingDataset, names: Iterable[str]) -> StreamingDataset:
    """``ds`` without the chunk files ``names``: the file list litdata's own ``subsample``
    makes, shortened before the dataset is first read, so its items are never asked for."""
    names = set(names)
    if names:
        kept = [(f, r) for f, r in zip(ds.subsampled_files, ds.region_of_interest)
                if Path(f).name not in names]
        ds.subsampled_files = [f for f, _ in kept]
        ds.region_of_interest = [r for _, r in kept]
    return ds


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shard dataset: its litdata folder (a local path or a URI) and the folder
    litdata keeps its copy of remote chunks in (None for a local one, read in place)."""

    location: str
    cache_dir: str | None = None

    def open(self, **options: Any) -> StreamingDataset:
        if is_remote(self.location) and self.cache_dir is None:
            raise DataError(f"{self.location}: reading from object storage needs a cache folder "
                            "for litdata's copy of the chunks (e.g. data.shard_cache)")
        opts = storage_options() if is_remote(self.location) else {}
        ds = StreamingDataset(self.location, cache_dir=self.cache_dir,
                              storage_options=opts or None, **options)
        return without_chunks(ds, (name for name, _, _ in check_chunks(self.location)))


@dataclass(frozen=True)
class ShardSample(Sample):
    """A sample of a shard dataset: ``path`` and the rest as in the source dataset (so that
    reports name the files they came from), the image read from litdata item ``item`` of
    ``source`` (-1: not yet looked up, see :func:`resolve_items`); ``index`` is its row in the
    split's ``samples.csv`` and the item's own ``index``."""

    source: ShardSplit | None = None
    index: int = -1
    item: int = -1

    def read_image(self) -> Any:
        """The decoded RGB image, as :func:`~deepfake_detect.data.images.load_rgb` gives a
        file's (ImageLoadError for bytes that do not decode: the sample is skipped)."""
        if self.item == NO_ITEM:
            raise ImageLoadError(self.path, "its shard chunk is unreadable (missing, truncated "
                                            "or overwritten); write the shards again")
        return decode_rgb(bytes(_stored_item(self)["image"]), self.path)


def read_index(folder: str | Path, split: str, *, cache_dir: str | Path | None = None,
               what: str = "data.path") -> list[ShardSample]:
    """The samples of ``split`` of a shard dataset, in index order (``path``: the source
    file); ``cache_dir``: where litdata keeps remote chunks when they are read."""
    location = as_location(folder, what)
    raw = _read_small(location, split, "samples.csv", what=what)
    if raw is None:
        return []
    source = ShardSplit(str(child(location, split)),
                        str(cache_dir) if cache_dir is not None else None)
    out = []
    for i, row in enumerate(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))):
        out.append(ShardSample(Path(row["path"]), int(row["label"]), row["video"],
                               row["split"] or None, row["dataset"], row["frame"] or None,
                               row["group"] or None, source=source, index=int(row.get("index", i))))
    return out


def shard_samples(location: Location, *, cache_dir: str | Path | None = None,
                  what: str = "data.path") -> tuple[list[ShardSample], list[tuple[str, str, str | None]]]:
    """Every sample of a shard dataset (all splits, each in index order) and the files left out
    when it was written: ``(path, reason, split or None)``. A remote one needs ``cache_dir``."""
    if is_remote(location) and cache_dir is None:  # refused before anything is fetched
        raise DataError(f"{what} {location}: this command reads shard datasets from local "
                        "folders only; copy it to a local folder (e.g. `aws s3 sync`) and give "
                        "that, or use train / evaluate / benchmark, which stream it")
    info = shard_info(location, what=what)
    if info is None:
        raise DataError(f"{what} {location}: not a shard dataset (no {MARKER})")
    samples = [s for split in SPLITS
               for s in read_index(location, split, cache_dir=cache_dir, what=what)]
    skipped = [(str(e.get("path", "")), str(e.get("reason", "")), e.get("split"))
               for e in info.get("skipped", [])]
    return samples, skipped


# --------------------------------------------------------------------------- reading items

# per process (a DataLoader worker opens its own): litdata's reader of each split, and each
# split's item number per sample index
_OPENED: dict[tuple[ShardSplit, int], StreamingDataset] = {}
_ITEMS: dict[tuple[ShardSplit, int], dict[int, int]] = {}
NO_ITEM = -2  # ShardSample.item of a sample whose item is in an unreadable chunk


def _reader(source: ShardSplit) -> StreamingDataset:
    key = (source, os.getpid())
    ds = _OPENED.get(key)
    if ds is None:
        ds = source.open(shuffle=False, drop_last=False)
        try:
            # Makes litdata's reader of this process, and (a slice does) switches it to whole
            # chunks kept in the cache: read by number, an item of a remote chunk is otherwise
            # fetched as a ranged request of its own (litdata's on_demand_bytes), one per image
            ds[0:1]
        except Exception as exc:
            raise DataError(_read_failure(source, 0, exc)) from None
        _OPENED[key] = ds
    return ds


def _item_numbers(source: ShardSplit) -> dict[int, int]:
    """The item number of each sample index of ``source`` whose item can be read (those in an
    unreadable chunk have none). litdata's workers write items in the order they finish them
    (``deepfake-detect shard --workers N``), so the order is read from the items themselves,
    once per process; item numbers are global, the same under DDP."""
    key = (source, os.getpid())
    if key not in _ITEMS:
        ds = _reader(source)
        order: dict[int, int] = {}
        for item in range(len(ds)):
            index = int(ds[item]["index"])
            if index < 0 or index in order:
                raise DataError(f"{source.location}: its items and samples.csv disagree (item "
                                f"{item} holds sample {index}); write the shards again")
            order[index] = item
        _ITEMS[key] = order
    return _ITEMS[key]


def forget_cache(cache_dir: str | Path) -> None:
    """Drop this process's readers of remote splits cached in ``cache_dir`` (before the folder
    is removed: a later read opens a fresh reader instead of one whose copy is gone)."""
    gone = str(cache_dir)
    for table in (_OPENED, _ITEMS):
        for key in [k for k in table if k[0].cache_dir == gone]:
            del table[key]


def resolve_items(samples: Sequence[Sample]) -> list[Sample]:
    """``samples`` with each :class:`ShardSample`'s item number looked up (one pass over the
    items of each split involved, in this process): done before scoring, so that a
    DataLoader's workers read items directly instead of each looking them up again. Other
    samples are returned as they are."""
    out = list(samples)
    for i, s in enumerate(out):
        if isinstance(s, ShardSample) and s.item < 0 and s.source is not None:
            # no item: in an unreadable chunk; it is then skipped like an unreadable file
            out[i] = dataclasses.replace(s, item=_item_numbers(s.source).get(s.index, NO_ITEM))
    return out


def _read_failure(source: ShardSplit, item: int, exc: BaseException) -> str:
    if is_remote(source.location):
        return _storage_problem(source.location, f"item {item} of", exc)
    detail = (str(exc).strip().splitlines() or [""])[0]
    return (f"{source.location}: cannot read item {item} ({type(exc).__name__}: {detail}); "
            "check the folder or write the shards again")


def _stored_item(sample: ShardSample) -> dict[str, Any]:
    """The litdata item of ``sample``, as litdata gives it."""
    if sample.source is None:
        raise DataError(f"{sample.path}: a shard sample without its shard split")
    ds = _reader(sample.source)
    item = sample.item if sample.item >= 0 else _item_numbers(sample.source).get(sample.index)
    if item is None or item < 0:
        raise ImageLoadError(sample.path, "its shard chunk is unreadable; write the shards again")
    try:
        raw = ds[item]
    except Exception as exc:
        raise DataError(_read_failure(sample.source, item, exc)) from None
    if int(raw["index"]) != sample.index:  # free to check, and a stale lookup must not mislabel
        raise DataError(f"{sample.source.location}: item {item} holds sample {raw['index']}, "
                        f"not {sample.index}; the shards changed while being read")
    return raw


def raw_items(folder: str | Path, split: str, *, cache_dir: str | Path | None = None
              ) -> list[dict[str, Any]]:
    """Every item of ``split`` as stored (bytes undecoded, ``meta`` parsed), in index order."""
    out = []
    for s in resolve_items(read_index(folder, split, cache_dir=cache_dir)):
        raw = _stored_item(s)
        out.append({"image": bytes(raw["image"]), "label": int(raw["label"]),
                    "index": int(raw["index"]),
                    "meta": json.loads(bytes(raw["meta"]).decode("utf-8"))})
    return out


class ShardDataset(StreamingDataset):
    """A litdata ``StreamingDataset`` over one split of a shard folder whose items are what
    :class:`~deepfake_detect.data.datasets.FaceImageDataset` gives: ``{"image", "label",
    "index"}`` (``index``: the sample's place in :func:`read_index`), or ``{"error", "path",
    "index"}`` for bytes that do not decode (:func:`collate_skipping` drops those).
    ``options`` go to ``StreamingDataset`` (a remote split: ``cache_dir``, ``storage_options``)."""

    def __init__(self, input_dir: str | Path, transform: Callable[[Any], Any], *,
                 shuffle: bool = False, seed: int = 0, exclude: Iterable[str] = (),
                 **options: Any) -> None:
        # drop_last is set by the loader (StreamingDataLoader passes its own on); ``exclude``:
        # chunk files left out (unreadable, see check_chunks)
        super().__init__(str(input_dir), shuffle=shuffle, seed=seed, drop_last=False,
                         **options)
        without_chunks(self, exclude)
        self.image_transform = transform

    def __getitem__(self, index: Any) -> dict[str, Any]:
        item = super().__getitem__(index)
        try:
            image = decode_rgb(bytes(item["image"]), f"item {item['index']}")
        except ImageLoadError as e:
            # named by its source file; the meta blob is parsed only for a failing item
            try:
                name = json.loads(bytes(item["meta"]).decode("utf-8"))["path"]
            except (ValueError, KeyError, TypeError):
                name = f"item {item['index']}"
            return {"error": e.reason, "path": str(name), "index": int(item["index"])}
        return {"image": self.image_transform(image), "label": int(item["label"]),
                "index": int(item["index"])}
