"""Dynamic batching (BatchMerger) and prepare's shared detection batches across videos."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
from conftest import BrightSquare, square_frames, write_video

from deepfake_detect.batching import BatchMerger
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.prepare import prepare


class Recorder:
    """A batched function (doubles numbers) that records its batches and checks that it never
    runs on two threads at once; items equal to ``bad`` make it fail."""

    def __init__(self, bad: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.inside = 0
        self.overlap = False
        self.bad = bad
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.inside += 1
            self.overlap |= self.inside > 1
        try:
            self.batches.append(list(items))
            if self.bad in items:
                raise ValueError(f"bad item {self.bad}")
            return [2 * i for i in items]
        finally:
            with self._lock:
                self.inside -= 1


def _callers(merger: BatchMerger, calls: list[list[int]], register: bool = True) -> list:
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(k: int) -> None:
        if register:
            with merger.client():
                start.wait()
                try:
                    results[k] = merger(calls[k])
                except ValueError as e:
                    results[k] = e
        else:
            start.wait()
            results[k] = merger(calls[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    return results


def test_calls_of_waiting_clients_run_as_one_batch() -> None:
    fn = Recorder()
    # a long wait window: only "every client is waiting" can start the batch early
    merger = BatchMerger(fn, max_items=16, wait_s=60)
    calls = [[1, 2, 3], [10, 11], [20, 21, 22, 23]]
    results = _callers(merger, calls)
    assert results == [[2 * i for i in c] for c in calls]  # each caller gets its own results
    assert len(fn.batches) == 1 and sorted(fn.batches[0]) == sorted(sum(calls, []))


def test_batches_never_exceed_max_items_and_never_overlap() -> None:
    fn = Recorder()
    merger = BatchMerger(fn, max_items=8, wait_s=60)
    calls = [list(range(k * 100, k * 100 + 5)) for k in range(6)]
    results = _callers(merger, calls)
    assert results == [[2 * i for i in c] for c in calls]
    assert all(len(b) <= 8 for b in fn.batches)
    assert sorted(sum(fn.batches, [])) == sorted(sum(calls, []))  # each item exactly once
    assert not fn.overlap


def test_a_call_larger_than_a_batch_runs_alone_in_one_piece() -> None:
    fn = Recorder()
    merger = BatchMerger(fn, max_items=4)
    assert merger(list(range(10))) == [2 * i for i in range(10)]
    assert fn.batches == [list(range(10))]
    assert merger([]) == [] and len(fn.batches) == 1


def test_one_callers_bad_item_fails_only_that_caller() -> None:
    fn = Recorder(bad=13)
    merger = BatchMerger(fn, max_items=16, wait_s=60)
    results = _callers(merger, [[1, 2], [13, 14], [5]])
    assert results[0] == [2, 4] and results[2] == [10]
    assert isinstance(results[1], ValueError) and "13" in str(results[1])


def test_unregistered_callers_start_after_the_wait_window() -> None:
    fn = Recorder()
    merger = BatchMerger(fn, max_items=100, wait_s=0.01)
    results = _callers(merger, [[1], [2], [3]], register=False)
    assert results == [[2], [4], [6]]


def test_wrong_number_of_results_is_an_error_not_a_misrouted_score() -> None:
    merger = BatchMerger(lambda items: items[:-1], max_items=4)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        merger([1, 2])


# --------------------------------------------------------------------------- prepare


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_fills_detection_batches_from_several_videos(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    for k in range(5):
        write_video(videos / f"v{k}.mp4", square_frames(12, empty=range(12) if k == 2 else ()))
    settings = PrepareConfig.model_validate(
        {"frames": {"count": 4}, "detect": {"batch_size": 12}, "crop": {"size": 32}}
    )
    alone, together = BrightSquare(), BrightSquare()
    prepare([videos], tmp_path / "one", settings, label=0, progress=False, detector=alone,
            videos_at_once=1)
    prepare([videos], tmp_path / "many", settings, label=0, progress=False, detector=together,
            videos_at_once=3)
    # one video at a time: each batch holds one video's 4 frames; together: up to 3 videos'
    assert max(alone.calls) == 4
    assert max(together.calls) > 4 and all(n <= 12 for n in together.calls)
    assert sum(together.calls) == sum(alone.calls) == 20
    # ... and the results are the same: rows (in input order) and crop bytes
    one, many = _manifest(tmp_path / "one"), _manifest(tmp_path / "many")
    assert one == many and sum(r["status"] == "no_face" for r in one) == 4
    for row in one:
        if row["path"]:
            a = (tmp_path / "one" / row["path"]).read_bytes()
            assert a == (tmp_path / "many" / row["path"]).read_bytes()


def test_videos_at_once_must_be_positive(tmp_path: Path) -> None:
    from deepfake_detect.errors import DataError

    write_video(tmp_path / "v.mp4", square_frames(4))
    with pytest.raises(DataError, match="videos_at_once must be >= 1"):
        prepare([tmp_path / "v.mp4"], tmp_path / "out", label=0, progress=False,
                detector=BrightSquare(), videos_at_once=0)


def test_a_rerun_with_every_video_reused_loads_no_face_model(tmp_path: Path) -> None:
    from deepfake_detect.data.prepare import UnitProcessor, make_units
    from deepfake_detect.data.media_inputs import find_media

    for k in range(3):
        write_video(tmp_path / "videos" / f"v{k}.mp4", square_frames(6))
    settings = PrepareConfig.model_validate({"frames": {"count": 2}, "crop": {"size": 32}})
    prepare([tmp_path / "videos"], tmp_path / "out", settings, label=0, progress=False,
            detector=BrightSquare())
    built: list[int] = []

    def build() -> BrightSquare:
        built.append(1)
        return BrightSquare()

    processor = UnitProcessor(settings, tmp_path / "out")
    processor.detector._inner = build  # what the default detector would be built by
    units = make_units(find_media([tmp_path / "videos"], label=0).items)
    results = list(processor.run_many(units, at_once=2))
    assert len(results) == 3 and all(r.reused for r in results)
    assert built == []
