"""prepare --part i/n on several machines into one folder, and prepare-merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BrightSquare, square_frames, write_video
from PIL import Image
from typer.testing import CliRunner

from deepfake_detect.cli import app
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data import prepare as prep
from deepfake_detect.outputs import PartLock
from deepfake_detect.data.media_inputs import find_media
from deepfake_detect.data.prepare import make_units, merge_parts, parse_part, part_of, prepare
from deepfake_detect.errors import DataError, OutputError
from deepfake_detect.outputs import RunLock

SETTINGS = {"frames": {"count": 4}, "detect": {"batch_size": 4}, "crop": {"size": 32}}


def _settings() -> PrepareConfig:
    return PrepareConfig.model_validate(SETTINGS)


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    for i, (split, label) in enumerate([("train", "real"), ("train", "fake"), ("val", "real"),
                                        ("val", "fake"), ("train", "real"), ("train", "fake")]):
        write_video(root / split / label / f"v{i}.mp4", square_frames(6 + i, empty=(1,)))
    (root / "val" / "fake" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + b"garbage" * 50)
    Image.fromarray(square_frames(1, (64, 64))[0]).save(root / "train" / "real" / "photo.png")
    return root


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def _two_parts(media: Path, out: Path) -> tuple[list[str], list[str]]:
    mine = []
    for i in range(2):
        report = prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(i, 2))
        assert report.manifest == out / f"manifest.part-{i}-of-2.csv"
        assert not (out / "manifest.csv").exists()
        assert (out / f"prepare.part-{i}-of-2.json").is_file()
        mine.append([k for k, _ in prep._read_part(out / f"prepare.part-{i}-of-2.json")["rows"]])
    return mine[0], mine[1]


def test_parts_then_merge_equal_one_whole_run(tmp_path: Path, media: Path) -> None:
    whole = tmp_path / "whole"
    prepare([media], whole, _settings(), progress=False, detector=BrightSquare())
    out = tmp_path / "parts"
    part0, part1 = _two_parts(media, out)
    # the parts are disjoint and together cover every unit, by the machine-independent rule
    keys = [u.key for u in make_units(find_media([media]).items)]
    assert set(part0).isdisjoint(part1) and sorted(part0 + part1) == sorted(keys)
    assert part0 and part1, "both parts should get work with these inputs"
    assert all(part_of(k, 2) == 0 for k in part0) and all(part_of(k, 2) == 1 for k in part1)
    report = merge_parts(out)
    assert report.manifest == out / "manifest.csv"
    assert (out / "manifest.csv").read_text() == (whole / "manifest.csv").read_text()
    assert _files(out) == _files(whole) and _files(out)
    assert report.faces == sum(1 for line in (out / "manifest.csv").read_text().splitlines() if ",ok," in line)
    assert prep._read_settings(out)["merged_parts"] == 2
    assert not list(out.glob("manifest.part-*")) and not list(out.glob("prepare.part-*"))
    # a part rerun reuses its finished units
    again = prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(1, 2))
    assert again.reused == len(part1)


def test_merge_refuses_missing_part_and_mixed_splits(tmp_path: Path, media: Path) -> None:
    out = tmp_path / "out"
    prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(1, 3))
    with pytest.raises(DataError, match=r"parts 0/3, 2/3 missing.*--part 0/3.*--part 2/3"):
        merge_parts(out)
    for i in (0, 2):
        prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(i, 3))
    prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(0, 2))
    with pytest.raises(DataError, match="different splits"):
        merge_parts(out)
    (out / "prepare.part-0-of-2.json").unlink()
    # a unit file lost: that part is incomplete
    lost = next(k for k, _ in prep._read_part(out / "prepare.part-2-of-3.json")["rows"])
    (out / ".parts" / f"{lost}.json").unlink()
    with pytest.raises(DataError, match=r"part 2/3 incomplete"):
        merge_parts(out)
    prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(2, 3))
    assert merge_parts(out).manifest.is_file()
    # other settings in one part: refused
    other = tmp_path / "other"
    prepare([media], other, _settings(), progress=False, detector=BrightSquare(), part=(0, 2))
    (other / ".parts").rename(tmp_path / "keep")  # let part 1 run with other settings
    changed = PrepareConfig.model_validate({**SETTINGS, "crop": {"size": 48}})
    prepare([media], other, changed, progress=False, detector=BrightSquare(), part=(1, 2))
    with pytest.raises(DataError, match="different settings"):
        merge_parts(other)


def test_part_locks(tmp_path: Path, media: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with PartLock(out, (0, 2), folder=out / prep.PARTS / "part-0-of-2"):
        with pytest.raises(OutputError, match=r"part 0/2 .* another run"):
            prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(0, 2))
        with PartLock(out, (1, 2), folder=out / prep.PARTS / "part-1-of-2"):  # another part may run meanwhile
            with pytest.raises(OutputError, match="in use"):  # a whole run may not
                prepare([media], out, _settings(), progress=False, detector=BrightSquare())
            with pytest.raises(OutputError, match="in use"):  # nor a merge
                merge_parts(out)
        prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(1, 2))
    with RunLock(out, "prepare"), pytest.raises(OutputError, match="whole-folder"):
        prepare([media], out, _settings(), progress=False, detector=BrightSquare(), part=(0, 2))


@pytest.mark.parametrize("text", ["2/2", "-1/2", "a/b", "0/0", "1", ""])
def test_bad_part_values(tmp_path: Path, media: Path, text: str) -> None:
    with pytest.raises(DataError, match=r"--part .*0 <= i < n"):
        parse_part(text)
    result = CliRunner().invoke(app, ["prepare", str(media), "--out", str(tmp_path / "o"), "--part", text])
    assert result.exit_code == 2 and "--part" in result.output and "0 <= i < n" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_part_tuples(tmp_path: Path, media: Path) -> None:
    for part in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(DataError, match="0 <= i < n"):
            prepare([media], tmp_path / "o", _settings(), progress=False, detector=BrightSquare(), part=part)
    assert parse_part(" 3 / 4 ") == (3, 4)


def test_cli_parts_and_merge(tmp_path: Path, media: Path, monkeypatch) -> None:
    monkeypatch.setattr(prep, "build_face_finder", lambda *a: BrightSquare())
    monkeypatch.setattr(prep, "check_detect_config", lambda *a: None)
    runner = CliRunner()
    out = tmp_path / "out"
    flags = ["--frames", "4", "--batch-size", "4", "--size", "32", "--device", "cpu"]
    first = runner.invoke(app, ["prepare", str(media), "--out", str(out), "--part", "0/2", *flags],
                          terminal_width=160)
    assert first.exit_code == 0, first.output
    assert "prepare-merge" in first.output and (out / "manifest.part-0-of-2.csv").is_file()
    early = runner.invoke(app, ["prepare-merge", str(out)], terminal_width=300)
    # (main() turns the DataError into one line; CliRunner hands the exception back)
    assert isinstance(early.exception, DataError) and "part 1/2 missing" in str(early.exception)
    assert "--part 1/2" in str(early.exception)
    second = runner.invoke(app, ["prepare", str(media), "--out", str(out), "--part", "1/2", *flags])
    assert second.exit_code == 0, second.output
    merged = runner.invoke(app, ["prepare-merge", str(out)], terminal_width=160)
    assert merged.exit_code == 0, merged.output
    assert "face crops written" in merged.output and (out / "manifest.csv").is_file()
    whole = tmp_path / "whole"
    prepare([media], whole, _settings(), progress=False, detector=BrightSquare())
    assert (out / "manifest.csv").read_text() == (whole / "manifest.csv").read_text()
