"""TTA and Monte-Carlo dropout on raw media (faces cut by the face pipeline) and on the clips of
the dual-stream video detector."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DUAL_STREAM, BrightSquare, write_face_like, write_video
from PIL import Image
from torch import nn

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.video_clips import ClipDataset, frames_folder_samples, group_frames, sequence_settings
from deepfake_detect.data.transforms import build_clip_transform, build_transform
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.aggregation import AGGREGATORS
from deepfake_detect.evaluation.evaluate import evaluate_checkpoint, evaluate_samples
from deepfake_detect.inference import media_scoring as media_module
from deepfake_detect.models.checkpoint_meta import CheckpointMeta
from deepfake_detect.inference.clip_scoring import score_videos
from deepfake_detect.inference.media_scoring import MediaScorer
from deepfake_detect.inference.predict import predict_files, predict_videos, write_predictions
from deepfake_detect.inference.tta import (
    TTASpec,
    apply_view,
    mc_dropout_passes,
    mc_dropout_probabilities,
    tta_probabilities,
)
from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors

PREPARE = {
    "frames": {"count": 3},
    "detect": {"device": "cpu", "batch_size": 3},
    "crop": {"select": "all", "size": 48, "margin": 1.3},
}
DUAL = {**TINY_DUAL_STREAM, "sequence": {"frames": 3, "stride": 1, "eval_clips": 2}}


# -- raw media ------------------------------------------------------------------------------------


def lopsided_frames(n: int, size: tuple[int, int] = (96, 128)) -> list[np.ndarray]:
    """Dark frames with a bright "face" whose brightness falls from left to right, so that a
    crop and its mirror image differ (a uniform square would be its own mirror image)."""
    h, w = size
    out = []
    for i in range(n):
        img = np.full((h, w, 3), 30, np.uint8)
        x = 10 + 7 * i
        ramp = np.linspace(255, 165, 40).astype(np.uint8)
        img[20:60, x : x + 40] = ramp[None, :, None]
        img[28:36, x + 6 : x + 14] = 0  # one dark "eye", on the left only
        out.append(img)
    return out


def image_detector(drop_rate: float = 0.0):
    torch.manual_seed(0)
    return build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32,
                           "drop_rate": drop_rate}).eval()


class RecordingScorer(MediaScorer):
    """Keeps the crops it classifies, so that a test can score them independently."""

    def _classify(self, crops):
        self.seen = list(crops)
        return super()._classify(crops)


def scorer(detector, **kwargs) -> RecordingScorer:
    return RecordingScorer(detector, PrepareConfig.model_validate(PREPARE), device="cpu",
                           face_detector=BrightSquare(), **kwargs)


def direct(detector, crops, flip: bool = False) -> np.ndarray:
    """P(fake) of the crops scored by hand (optionally mirrored) with the detector in eval."""
    x = torch.stack([build_transform(detector.preprocessing())(c) for c in crops])
    with torch.no_grad():
        return detector.probabilities(detector(x.flip(-1) if flip else x)).numpy().astype(np.float64)


@pytest.fixture(scope="module")
def lopsided_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "lopsided.mp4", lopsided_frames(9))


@pytest.fixture(scope="module")
def lopsided_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "lopsided.png"
    Image.fromarray(lopsided_frames(1)[0]).save(path)
    return path


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_media_hflip_tta_is_the_mean_of_direct_and_mirrored_crops(lopsided_video, aggregation):
    detector = image_detector()
    tta = scorer(detector, aggregation=aggregation, tta="hflip")
    result = tta.score(lopsided_video)
    assert not result.error and result.frames == 3 and result.faces == 3
    plain, mirrored = direct(detector, tta.seen), direct(detector, tta.seen, flip=True)
    assert np.abs(plain - mirrored).max() > 1e-4  # the detector does see the asymmetry
    expected = (plain + mirrored) / 2
    got = np.array([f.score for f in result.per_face])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(f.score_std is None for f in result.per_face) and result.score_std is None
    # the file score is the aggregation of the TTA face scores
    assert result.score == pytest.approx(AGGREGATORS[aggregation](expected, None), abs=1e-6)
    # and it differs from the score without TTA
    assert abs(scorer(detector, aggregation=aggregation).score(lopsided_video).score
               - result.score) > 1e-6


def test_media_identity_tta_equals_no_tta_exactly(lopsided_video, lopsided_photo):
    detector = image_detector()
    for path in (lopsided_video, lopsided_photo):
        plain = scorer(detector).score(path)
        same = scorer(detector, tta="identity").score(path)
        assert plain.faces >= 1 and same.score == plain.score
        assert [f.score for f in same.per_face] == [f.score for f in plain.per_face]


def test_media_mc_dropout_std_over_passes_of_the_file_score(lopsided_video):
    detector = image_detector(0.5)
    mc = scorer(detector, aggregation="max", mc_dropout=5)
    result = mc.score(lopsided_video)
    assert result.faces == 3 and result.score_std is not None and result.score_std > 0
    assert all(f.score_std is not None and f.score_std > 0 for f in result.per_face)
    # the same passes by hand: one chunk of crops, seeded with seed + 0
    x = torch.stack([mc.transform(c) for c in mc.seen])
    with torch.no_grad():
        passes = mc_dropout_passes(detector, x, 5, seed=0).double().numpy()
    np.testing.assert_allclose([f.score for f in result.per_face], passes.mean(0), atol=1e-6)
    np.testing.assert_allclose([f.score_std for f in result.per_face], passes.std(0, ddof=1),
                               atol=1e-6)
    # file: max of the face means; its std: std over the passes of each pass's max
    assert result.score == pytest.approx(passes.mean(0).max(), abs=1e-6)
    assert result.score_std == pytest.approx(passes.max(1).std(ddof=1), abs=1e-6)
    # reproducible with the same seed, different with another, model left in eval
    again = scorer(detector, aggregation="max", mc_dropout=5).score(lopsided_video)
    assert again.score == result.score and again.score_std == result.score_std
    other = scorer(detector, aggregation="max", mc_dropout=5, seed=7).score(lopsided_video)
    assert other.score != result.score
    assert not any(m.training for m in detector.modules())


def test_media_mc_dropout_without_dropout_fails_before_reading(lopsided_video):
    faces = BrightSquare()
    with pytest.raises(ConfigError, match="no dropout"):
        MediaScorer(image_detector(0.0), PrepareConfig.model_validate(PREPARE), device="cpu",
                    face_detector=faces, mc_dropout=3)
    with pytest.raises(ConfigError, match="--tta"):
        MediaScorer(image_detector(0.0), PrepareConfig.model_validate(PREPARE), device="cpu",
                    face_detector=faces, tta="vflip")
    assert faces.calls == []


def test_predict_files_fills_score_std_for_videos_and_photos(
    lopsided_video, lopsided_photo, tmp_path, monkeypatch
):
    monkeypatch.setattr(media_module, "build_face_finder", lambda *a, **k: BrightSquare())
    detector = image_detector(0.5)
    detector.checkpoint_meta = CheckpointMeta(model=detector.config.model_dump(mode="json"),
                                              experiment={"prepare": PREPARE})
    crop = tmp_path / "crop.png"
    write_face_like(crop, 1, np.random.default_rng(0), 32)
    per_face: list = []
    rows = predict_files(detector, [lopsided_video, lopsided_photo, crop], detect_faces=False,
                         progress=False, device="cpu", num_workers=0, tta="hflip",
                         mc_dropout=3, per_face=per_face)
    by_name = {Path(r.filename).name: r for r in rows}
    video = by_name["lopsided.mp4"]
    assert video.faces == 3 and not video.error and video.score_std > 0
    # without --detect-faces the photos are face crops, scored as they are (score_files)
    assert all(by_name[n].label is not None and by_name[n].score_std > 0
               for n in ("lopsided.png", "crop.png"))
    assert len(per_face) == 3 and all(f["score_std"] > 0 for f in per_face)
    out = io.StringIO()
    write_predictions(rows, out)
    header, *lines = list(csv.reader(io.StringIO(out.getvalue())))
    assert header[-2:] == ["score_std", "status"] and all(float(r[-2]) > 0 for r in lines)
    # --detect-faces photo: through the face pipeline, with TTA and a std too
    (face_photo,) = predict_files(detector, [lopsided_photo], detect_faces=True, progress=False,
                                  device="cpu", tta="hflip", mc_dropout=3)
    assert face_photo.faces == 1 and face_photo.score_std > 0


def test_predict_files_refuses_bad_tta_or_no_dropout_before_reading(lopsided_video, monkeypatch):
    from deepfake_detect.inference import predict as predict_module

    def read(*args, **kwargs):
        raise AssertionError("a file was read")

    monkeypatch.setattr(predict_module, "score_files", read)
    monkeypatch.setattr(media_module, "build_face_finder", read)
    crop = Path(__file__).with_name("crop.png")  # never opened
    with pytest.raises(ConfigError, match="no dropout"):
        predict_files(image_detector(0.0), [lopsided_video, crop], mc_dropout=2, progress=False)
    with pytest.raises(ConfigError, match="--tta"):
        predict_files(image_detector(0.3), [lopsided_video], tta="vflip", progress=False)


# -- video (sequence) detector ------------------------------------------------------------------


def dual_stream(dropout: list[float] | None = None):
    """A tiny untrained dual-stream detector made sensitive to its input: fresh, its scores sit
    within 1e-5 of 0.5 (near-zero features, a small output layer), so a view could not be told
    from none. BatchNorm statistics of random clips and unit-scale linear layers fix that."""
    torch.manual_seed(0)
    config = dict(DUAL)
    if dropout is not None:
        config["dropout"] = dropout
    detector = build_detector(config)
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration batch
        detector.train()(torch.randn(8, 3, 3, 32, 32))
        for m in [*detector.fusion.modules(), *detector.head.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0)
    return detector.eval()


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory) -> Path:
    """``root/{real,fake}/<real|fake>_v<k>/<n>.png``: 2 videos per class, 5 frames each (two
    evaluation clips of 3 frames per video); the folder names are the video ids."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for label, name in ((0, "real"), (1, "fake")):
        for v in range(2):
            for f in range(5):
                write_face_like(root / name / f"{name}_v{v}" / f"{f}.png", label, rng, 32)
    return root


def labelled_samples(root: Path) -> list:
    return [s for label, name in ((0, "real"), (1, "fake")) for v in range(2)
            for s in frames_folder_samples(root / name / f"{name}_v{v}", label)]


def test_clip_views_apply_alike_to_every_frame():
    x = torch.randn(2, 3, 3, 20, 24)
    for view in TTASpec.parse("hflip,scale:0.8,scale:1.2,five_crop").views:
        y = apply_view(view, x)
        assert y.shape == x.shape
        for t in range(x.shape[1]):
            torch.testing.assert_close(y[:, t], view.apply(x[:, t]), rtol=0, atol=0)
    assert torch.equal(apply_view(TTASpec.parse("hflip").views[1], x), x.flip(-1))


def test_hflip_tta_of_a_clip_is_the_mean_over_the_clip_and_its_mirrored_frames():
    detector = dual_stream()
    x = torch.randn(3, 3, 3, 32, 32)
    with torch.no_grad():
        plain, mirrored = detector.predict_proba(x), detector.predict_proba(x.flip(-1))
        got = tta_probabilities(detector, x, "hflip")
        chunked = tta_probabilities(detector, x, "hflip", max_batch=2)
        mean, std = mc_dropout_probabilities(detector, x, 4, spec="hflip")
    assert (plain - mirrored).abs().max() > 1e-5
    torch.testing.assert_close(got, (plain + mirrored) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=1e-5)
    assert mean.shape == std.shape == (3,) and (std > 0).all()


def clip_batch(detector, samples) -> tuple[torch.Tensor, np.ndarray]:
    """Every evaluation clip of the videos, stacked in the order score_videos scores them."""
    pre = detector.preprocessing()
    seq = sequence_settings(pre)
    data = ClipDataset(group_frames(samples), build_clip_transform(pre), seq.frames, seq.stride,
                       eval_clips=seq.eval_clips)
    items = [data[i] for i in range(len(data))]
    return torch.stack([it["image"] for it in items]), np.array([it["video"] for it in items])


def test_score_videos_with_tta_and_mc_dropout(video_dirs):
    detector = dual_stream()
    samples = labelled_samples(video_dirs)
    x, video = clip_batch(detector, samples)
    assert len(x) == 8  # 4 videos x 2 clips
    kw = {"batch_size": 16, "num_workers": 0, "progress": False, "device": "cpu"}
    flipped = score_videos(detector, samples, tta="hflip", **kw)
    assert flipped.std is None
    with torch.no_grad():
        clip_scores = ((detector.predict_proba(x) + detector.predict_proba(x.flip(-1))) / 2).numpy()
    expected = np.array([clip_scores[video == v].mean() for v in range(4)])
    np.testing.assert_allclose(flipped.scores, expected, atol=1e-6)
    assert np.abs(score_videos(detector, samples, **kw).scores - expected).max() > 1e-6

    mc = score_videos(detector, samples, mc_dropout=4, **kw)
    with torch.no_grad():
        passes = mc_dropout_passes(detector, x, 4, seed=0).double().numpy()
    per_pass = np.stack([passes[:, video == v].mean(axis=1) for v in range(4)], axis=1)
    np.testing.assert_allclose(mc.scores, per_pass.mean(0), atol=1e-6)
    np.testing.assert_allclose(mc.std, per_pass.std(0, ddof=1), atol=1e-6)
    assert (mc.std > 0).all()
    again = score_videos(detector, samples, mc_dropout=4, **kw)
    assert np.array_equal(again.scores, mc.scores) and np.array_equal(again.std, mc.std)
    assert not any(m.training for m in detector.modules())


def test_sequence_detector_without_dropout_fails_early(video_dirs, tmp_path):
    detector = dual_stream(dropout=[])
    with pytest.raises(ConfigError, match="no dropout"):
        score_videos(detector, labelled_samples(video_dirs), mc_dropout=2, progress=False)
    # before any folder is looked at: a missing one would otherwise be an error row
    with pytest.raises(ConfigError, match="no dropout"):
        predict_videos(detector, [], [tmp_path / "missing"], mc_dropout=2, progress=False)
    with pytest.raises(ConfigError, match="--tta"):
        predict_videos(detector, [], [tmp_path / "missing"], tta="vflip", progress=False)


def test_evaluate_and_predict_videos_record_tta_and_score_std(video_dirs, tmp_path):
    detector = dual_stream()
    metrics = evaluate_samples(detector, labelled_samples(video_dirs), tmp_path / "eval", 0.5,
                               num_workers=0, device="cpu", plots=False, progress=False,
                               tta="hflip", mc_dropout=3)
    assert metrics["tta"] == ["identity", "hflip"] and metrics["mc_dropout"] == 3
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["tta"] == ["identity", "hflip"] and saved["mc_dropout"] == 3
    with open(tmp_path / "eval" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["video", "label", "score", "clips", "frames", "score_std"]
    assert len(rows) == 4 and all(float(r["score_std"]) > 0 for r in rows)

    # evaluate_checkpoint (the CLI's evaluate) on a saved model: no refusal any more
    ckpt = export_safetensors(detector, tmp_path / "ds.safetensors",
                              checkpoint_meta(detector, threshold=0.5, experiment={
                                  "model": detector.config.model_dump(mode="json")}))
    plain = evaluate_checkpoint(ckpt, [video_dirs], tmp_path / "ckpt", split="all",
                                num_workers=0, device="cpu", plots=False, progress=False)
    (name, m), = plain.items()
    assert m["tta"] is None and m["mc_dropout"] == 0
    with open(tmp_path / "ckpt" / name / "predictions.csv", newline="") as fh:
        assert "score_std" not in next(csv.reader(fh))
    tta = evaluate_checkpoint(ckpt, [video_dirs], tmp_path / "ckpt_tta", split="all",
                              num_workers=0, device="cpu", plots=False, progress=False,
                              tta="hflip")
    assert tta[name]["tta"] == ["identity", "hflip"]

    folders = [video_dirs / "fake" / "fake_v0", video_dirs / "real" / "real_v1"]
    rows = predict_videos(detector, [], folders, num_workers=0, device="cpu", progress=False,
                          tta="hflip", mc_dropout=3)
    assert [r.faces for r in rows] == [2, 2] and all(r.score_std > 0 for r in rows)
    out = io.StringIO()
    write_predictions(rows, out)
    assert out.getvalue().splitlines()[0].endswith(",score_std,status")
    plain_rows = predict_videos(detector, [], folders, num_workers=0, device="cpu",
                                progress=False)
    assert all(r.score_std is None for r in plain_rows)
    assert any(abs(a.score - b.score) > 1e-6 for a, b in zip(rows, plain_rows))
