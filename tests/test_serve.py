"""deepfake-detect serve: the HTTP API gives predict's scores, batches concurrent requests,
keeps videos off the image path, and refuses bad input with a JSON 4xx, never a 500."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import sys
import threading
import time
import types
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import face_checkpoint
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from deepfake_detect.cli.app import app as cli_app
from deepfake_detect.data.faces.pipeline import FacePipeline
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predict import PredictRequest, predict
from deepfake_detect.serve import ServeSettings, create_app, load_engine, run_in_thread
from deepfake_detect.serve.engine import Engine
from deepfake_detect.serve.uploads import sniff

PREPARE = {
    "frames": {"count": 3},  # three frames of a video: the video tests stay quick
    "detect": {"detect_size": 480, "device": "cpu"},
    "crop": {"select": "all", "size": 48, "margin": 1.3},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return face_checkpoint(tmp_path_factory.mktemp("serve-ckpt"), PREPARE)


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> Engine:
    """One loaded model for the tests that need no special engine (loading is the slow part)."""
    return load_engine(ServeSettings(checkpoints=[checkpoint], device="cpu"))


@pytest.fixture
def photos(shared: Path) -> dict[str, Path]:
    faces = shared / "media" / "faces"
    return {name: faces / f"{name}.jpg" for name in ("paul_rudd", "two_people", "kate_siegel")}


@pytest.fixture
def video(shared: Path) -> Path:
    return shared / "media" / "videos" / "hamilton_360p.mp4"


def settings(checkpoint: Path, **changes) -> ServeSettings:
    return ServeSettings(checkpoints=[checkpoint], device="cpu", **changes)


def client_for(checkpoint: Path, engine: Engine | None = None, **changes) -> TestClient:
    return TestClient(create_app(settings(checkpoint, **changes), engine))


def post(client: TestClient, path: Path | None = None, *, data: bytes | None = None,
         name: str | None = None, headers: dict | None = None, **fields):
    content = data if data is not None else path.read_bytes()
    return client.post("/v1/predict", files={"file": (name or path.name, content)},
                       data=fields, headers=headers or {})


def uploads_left(client: TestClient) -> list[Path]:
    return client.app.state.service.folder.files()


def wait_for_job(client: TestClient, url: str, timeout: float = 60.0, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(url, **kw).json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {url} not finished after {timeout} s")


def predicted(checkpoint: Path, files: list[Path], aggregation: str = "mean",
              tta: str | None = None):
    """predict's rows and per-face rows for ``files`` (the reference the API must equal)."""
    request = PredictRequest(model=ModelSource(checkpoint), inputs=files, aggregation=aggregation,
                             options=ScoringOptions(device="cpu", progress=False, tta=tta))
    report = predict(request, stdout=io.StringIO())
    return {Path(r.filename): r for r in report.rows}, report.per_face


def is_one_line_error(response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"kind", "message"} and "\n" not in error["message"]
    assert "Traceback" not in response.text and "/tmp" not in error["message"]
    if kind is not None:
        assert error["kind"] == kind, error
    return error


# -- endpoints -------------------------------------------------------------------------------


def test_endpoints_page_models_health_and_metrics(checkpoint: Path) -> None:
    (checkpoint.parent / "report.json").write_text(json.dumps(
        {"class_counts": {"real": 10, "fake": 12}, "monitor": "val/auc", "best_score": 0.9}))
    with client_for(checkpoint) as client:  # its own engine: the card reads the run folder
        assert client.get("/healthz").json() == {"status": "ok"}
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert client.get("/static/index.html").status_code == 200
        (card,) = client.get("/v1/models").json()["models"]
        assert card["detector"] == "timm" and card["input_size"] == 32
        assert card["threshold"] == 0.5 and card["calibration"] == {"temperature": 1.0,
                                                                    "calibrated": False}
        assert card["checkpoint"] == "model.safetensors"  # a name, never a server path
        assert card["training"]["class_counts"] == {"real": 10, "fake": 12}
        assert card["version"]
        is_one_line_error(client.get("/v1/jobs/nope"), 404, "not_found")
        is_one_line_error(client.get("/no/such/page"), 404, "not_found")
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        for name in ("deepfake_detect_requests_total", "deepfake_detect_request_seconds_bucket",
                     "deepfake_detect_queue_depth", "deepfake_detect_errors_total"):
            assert name in text
        assert 'endpoint="/v1/jobs/{job_id}",status="404"' in text  # the route, not the id
        assert 'deepfake_detect_errors_total{kind="not_found"}' in text
        assert 'deepfake_detect_queue_depth{kind="video"} 0.0' in text


def test_image_scores_equal_predict(checkpoint: Path, engine: Engine, photos) -> None:
    files = list(photos.values())
    with client_for(checkpoint, engine) as client:
        for aggregation in ("mean", "max"):
            rows, faces = predicted(checkpoint, files, aggregation)
            for path in files:
                body = post(client, path, aggregation=aggregation).json()
                expected = rows[path]
                assert body["status"] == "ok" and body["media"] == "image"
                assert body["filename"] == path.name
                assert body["p_fake"] == pytest.approx(expected.score, abs=1e-5)
                assert body["verdict"] == ("fake" if expected.label == 1 else "real")
                assert body["threshold"] == 0.5 and body["calibrated"] is False
                assert body["counts"] == {"frames": 1, "faces": expected.faces}
                mine = [f["score"] for f in body["faces"]]
                theirs = [f["score"] for f in faces if f["filename"] == str(path)]
                np.testing.assert_allclose(mine, theirs, atol=1e-5)
                assert [f["box"] for f in body["faces"]] == [
                    f["box"] for f in faces if f["filename"] == str(path)]
                assert len(body["frames"]) == 1 and body["frames"][0]["faces"] == expected.faces
                assert set(body["timings"]) == {"decode_detect", "scoring", "explain", "total"}
                assert body["model"]["detector"] == "timm"
        assert uploads_left(client) == []


def test_tta_option_equals_predict_tta(checkpoint: Path, engine: Engine, photos) -> None:
    path = photos["paul_rudd"]
    rows, _ = predicted(checkpoint, [path], tta="default")
    with client_for(checkpoint, engine) as client:
        body = post(client, path, tta="hflip").json()
        assert body["options"]["tta"] == ["identity", "hflip"]
        assert body["p_fake"] == pytest.approx(rows[path].score, abs=1e-5)
        web_page = post(client, path, tta="true").json()  # the page's check box
        assert web_page["p_fake"] == pytest.approx(rows[path].score, abs=1e-5)


def test_calibrated_checkpoint_gives_calibrated_scores(tmp_path: Path, photos) -> None:
    from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors

    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    meta = checkpoint_meta(det, threshold=0.45, experiment={
        "model": det.config.model_dump(mode="json"), "prepare": PREPARE})
    meta.update(temperature=0.05, calibration={"data": "/data/secret/val", "split": "val", "n": 40,
                                               "threshold_strategy": "youden"})
    ckpt = export_safetensors(det, tmp_path / "calibrated.safetensors", meta)
    path = photos["paul_rudd"]
    rows, _ = predicted(ckpt, [path])
    with client_for(ckpt) as client:
        body = post(client, path).json()
    assert body["calibrated"] is True and body["threshold"] == 0.45
    assert body["p_fake"] == pytest.approx(rows[path].score, abs=1e-5)
    calibration = body["model"]["calibration"]
    assert calibration["temperature"] == 0.05 and calibration["fitted_on"] == "val"


def test_ensemble_scores_equal_predict(tmp_path: Path, checkpoint: Path, photos) -> None:
    other = face_checkpoint(tmp_path, PREPARE)
    path = photos["two_people"]
    request = PredictRequest(model=ModelSource([checkpoint, other]), inputs=[path],
                             options=ScoringOptions(device="cpu", progress=False))
    (expected,) = predict(request, stdout=io.StringIO()).rows
    app = create_app(ServeSettings(checkpoints=[checkpoint, other], device="cpu"))
    with TestClient(app) as client:
        body = post(client, path).json()
        (card,) = client.get("/v1/models").json()["models"]
    assert body["p_fake"] == pytest.approx(expected.score, abs=1e-5)
    assert body["score_std"] == pytest.approx(expected.score_std, abs=1e-5)
    assert card["kind"] == "ensemble" and len(card["members"]) == 2


def test_image_without_a_face_is_no_face(checkpoint: Path, engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    texture = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(texture).save(buffer, "PNG")
    with client_for(checkpoint, engine) as client:
        response = post(client, data=buffer.getvalue(), name="texture.png")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "no_face" and body["p_fake"] is None and body["verdict"] is None
        assert body["faces"] == [] and body["frames"] == [] and body["counts"]["faces"] == 0
        assert uploads_left(client) == []


def test_explain_adds_heatmaps(checkpoint: Path, engine: Engine, photos, monkeypatch) -> None:
    """explain=true calls inference.explain.explain_crops with the face crops (a stand-in here:
    that module is another engineer's) and sends each overlay as a PNG data URL."""
    seen = {}

    def explain_crops(predictor, crops, options):
        seen["crops"] = [c.shape for c in crops]
        return [np.full_like(c, 200) for c in crops]

    module = types.ModuleType("deepfake_detect.inference.explain")
    module.explain_crops = explain_crops
    monkeypatch.setitem(sys.modules, "deepfake_detect.inference.explain", module)
    with client_for(checkpoint, engine) as client:
        body = post(client, photos["two_people"], explain="true").json()
        plain = post(client, photos["two_people"]).json()
    assert len(seen["crops"]) == len(body["faces"]) == 2
    for face, shape in zip(body["faces"], seen["crops"]):
        assert face["heatmap"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(face["heatmap"].split(",", 1)[1])))
        assert png.size == (shape[1], shape[0])
    assert all("heatmap" not in f for f in plain["faces"])
    assert body["p_fake"] == plain["p_fake"]

    def refuses(predictor, crops, options):
        raise ConfigError("this detector cannot be explained")

    module.explain_crops = refuses
    with client_for(checkpoint, engine) as client:
        refused = post(client, photos["two_people"], explain="true").json()
    assert refused["p_fake"] == plain["p_fake"]
    assert all("heatmap" not in f for f in refused["faces"])
    assert refused["notes"] == ["no heatmaps: this detector cannot be explained"]


def test_explain_with_the_real_heatmaps(checkpoint: Path, engine: Engine, photos) -> None:
    pytest.importorskip("deepfake_detect.inference.explain")
    with client_for(checkpoint, engine) as client:
        body = post(client, photos["paul_rudd"], explain="true").json()
        plain = post(client, photos["paul_rudd"]).json()
    (face,) = body["faces"]
    png = Image.open(io.BytesIO(base64.b64decode(face["heatmap"].split(",", 1)[1])))
    assert png.size == (PREPARE["crop"]["size"],) * 2 and png.mode == "RGB"
    assert body["p_fake"] == plain["p_fake"]  # explaining changes no score
    assert body["timings"]["explain"] > 0


# -- videos ----------------------------------------------------------------------------------


def test_video_is_a_job_with_predicts_score(checkpoint: Path, engine: Engine, video: Path,
                                           monkeypatch) -> None:
    from deepfake_detect.serve.jobs import Job

    rows, faces = predicted(checkpoint, [video], "sbi")
    reported = []
    original = Job.set_progress
    monkeypatch.setattr(Job, "set_progress",
                        lambda self, done, total: (reported.append((done, total)),
                                                   original(self, done, total)))
    with client_for(checkpoint, engine) as client:
        response = post(client, video, aggregation="sbi")
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
        job = wait_for_job(client, accepted["status_url"])
        assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None
        result = job["result"]
        assert result["media"] == "video" and result["status"] == "ok"
        assert result["p_fake"] == pytest.approx(rows[video].score, abs=1e-5)
        assert result["counts"] == {"frames": 3, "faces": rows[video].faces}
        frames = result["frames"]
        assert len(frames) >= 2
        assert [f["frame"] for f in frames] == sorted(f["frame"] for f in frames)
        for row in frames:  # sbi per frame: its most suspicious face
            scores = [f["score"] for f in result["faces"] if f["frame"] == row["frame"]]
            assert row["score"] == pytest.approx(max(scores))
            assert row["time"] >= 0
        assert len(result["faces"]) == len([f for f in faces if f["filename"] == str(video)])
        assert uploads_left(client) == []
    # MediaScorer.score reports the frames as they are cut, ending at the frames read
    assert reported and reported[-1] == (3, 3)
    assert [d for d, _ in reported] == sorted(d for d, _ in reported)


def test_slow_video_does_not_block_images(checkpoint: Path, engine: Engine, video: Path,
                                          photos, monkeypatch) -> None:
    """A video held up in its face detection; an image posted meanwhile is answered at once."""
    release = threading.Event()
    original = FacePipeline._detect_and_cut

    def slow_video_detection(self, frames, tracker):
        release.wait(timeout=30)  # a very slow video, until the test lets it go
        return original(self, frames, tracker)

    monkeypatch.setattr(FacePipeline, "_detect_and_cut", slow_video_detection)
    with client_for(checkpoint, engine) as client:
        url = post(client, video).json()["status_url"]
        start = time.monotonic()
        image = post(client, photos["paul_rudd"])
        assert image.status_code == 200 and image.json()["status"] == "ok"
        assert time.monotonic() - start < 20
        assert client.get(url).json()["state"] == "running"
        metrics = client.get("/metrics").text
        assert 'deepfake_detect_queue_depth{kind="video"} 1.0' in metrics
        release.set()
        assert wait_for_job(client, url)["state"] == "done"
        assert uploads_left(client) == []


def test_video_over_the_time_limit_fails_with_timeout(checkpoint: Path, engine: Engine,
                                                      video: Path, monkeypatch) -> None:
    original = FacePipeline._detect_and_cut

    def slow(self, frames, tracker):
        time.sleep(0.4)
        return original(self, frames, tracker)

    monkeypatch.setattr(FacePipeline, "_detect_and_cut", slow)
    with client_for(checkpoint, engine, timeout_s=0.3) as client:
        job = wait_for_job(client, post(client, video).json()["status_url"])
        assert job["state"] == "failed" and job["error"]["kind"] == "timeout"
        assert job["result"] is None
        assert uploads_left(client) == []


def test_image_over_the_time_limit_is_504(checkpoint: Path, engine: Engine, photos,
                                          monkeypatch) -> None:
    original = FacePipeline._photo_batch

    def slow(self, pending):
        time.sleep(1.0)
        return original(self, pending)

    monkeypatch.setattr(FacePipeline, "_photo_batch", slow)
    with client_for(checkpoint, engine, timeout_s=0.3) as client:
        is_one_line_error(post(client, photos["paul_rudd"]), 504, "timeout")
        deadline = time.monotonic() + 10  # the work stops at its next batch, then cleans up
        while uploads_left(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uploads_left(client) == []


# -- bad input -------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` pixels, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def _audio_only_mp4(path: Path) -> bytes:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _wav() -> bytes:
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return buffer.getvalue()


def _zero_frame_avi(path: Path) -> bytes:
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path.read_bytes()


def _corrupt_jpeg(photo: Path) -> bytes:
    data = bytearray(photo.read_bytes()[:4000])
    data[200:4000] = b"\x00" * 3800  # the header survives, the image data does not
    return bytes(data)


BAD = {
    "corrupt_jpeg": ("x.jpg", 422, "unreadable"),
    "truncated_jpeg": ("cut.jpg", 422, "unreadable"),
    "text_named_jpg": ("x.jpg", 415, "unsupported_type"),
    "audio_only_mp4": ("voice.m4a", 422, "no_video_stream"),
    "wav": ("voice.wav", 415, "no_video"),
    "zero_frame_video": ("empty.avi", 422, "no_frames"),
    "png_40000x40000": ("bomb.png", 413, "image_too_large"),
    "empty_file": ("nothing.jpg", 422, "empty_file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_json_4xx(case: str, checkpoint: Path, engine: Engine, photos,
                                 tmp_path: Path) -> None:
    name, status, kind = BAD[case]
    data = {
        "corrupt_jpeg": lambda: _corrupt_jpeg(photos["paul_rudd"]),
        "truncated_jpeg": lambda: photos["paul_rudd"].read_bytes()[:300_000],  # header intact
        "text_named_jpg": lambda: b"just some text, not a picture\n" * 10,
        "audio_only_mp4": lambda: _audio_only_mp4(tmp_path / "a.mp4"),
        "wav": _wav,
        "zero_frame_video": lambda: _zero_frame_avi(tmp_path / "z.avi"),
        "png_40000x40000": lambda: _png_header_only(40000, 40000),
        "empty_file": lambda: b"",
    }[case]()
    with client_for(checkpoint, engine) as client:
        is_one_line_error(post(client, data=data, name=name), status, kind)
        assert uploads_left(client) == []
        assert client.get("/healthz").status_code == 200  # no worker hung


def test_bad_options_and_forms_are_json_4xx(checkpoint: Path, engine: Engine, photos) -> None:
    path = photos["paul_rudd"]
    with client_for(checkpoint, engine) as client:
        is_one_line_error(post(client, path, aggregation="average"), 422, "bad_option")
        is_one_line_error(post(client, path, tta="sideways"), 422, "bad_option")
        is_one_line_error(post(client, path, explain="maybe"), 422, "bad_option")
        is_one_line_error(post(client, path, agregation="max"), 422, "bad_option")
        missing = client.post("/v1/predict", data={"aggregation": "max"},
                              files={"other": ("a.jpg", path.read_bytes())})
        is_one_line_error(missing, 422, "missing_file")
        is_one_line_error(client.post("/v1/predict", json={"file": "x"}), 415, "bad_request")
        is_one_line_error(client.get("/v1/predict"), 405, "method_not_allowed")
        assert uploads_left(client) == []


def test_upload_over_the_limit_is_413(checkpoint: Path, engine: Engine, photos) -> None:
    path = photos["two_people"]
    assert path.stat().st_size > 20_000
    with client_for(checkpoint, engine, max_upload_mb=0.01) as client:
        is_one_line_error(post(client, path), 413, "too_large")
        assert uploads_left(client) == []


def _stream_upload(app, chunks: list[bytes], disconnect_after: int | None = None):
    """POST ``chunks`` as a multipart body with no Content-Length, straight to the ASGI app;
    the client goes away after ``disconnect_after`` chunks. (chunks pulled, messages sent)"""
    pulled, sent = [], []

    async def receive():
        if disconnect_after is not None and len(pulled) >= disconnect_after:
            return {"type": "http.disconnect"}
        chunk = chunks[len(pulled)]
        pulled.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": len(pulled) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
             "root_path": "", "scheme": "http", "query_string": b"", "http_version": "1.1",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")]}
    asyncio.run(app(scope, receive, send))
    return pulled, sent


UPLOAD_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
               + b"\xff\xd8\xff" + b"\0" * 509)


def test_upload_is_refused_as_soon_as_the_limit_is_passed(checkpoint: Path, engine: Engine) -> None:
    """Streamed without a Content-Length: reading stops at the chunk that passes the limit."""
    app = create_app(settings(checkpoint, max_upload_mb=0.05), engine)
    pulled, sent = _stream_upload(app, [UPLOAD_HEAD] + [b"\0" * 8192] * 1000)  # 8 MB offered
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["kind"] == "too_large"
    assert len(pulled) <= 0.05 * 1024 * 1024 / 8192 + 2  # not one chunk more than needed
    assert app.state.service.folder.files() == []
    app.state.service.close()


def test_client_gone_mid_upload_leaves_nothing(checkpoint: Path, engine: Engine) -> None:
    app = create_app(settings(checkpoint), engine)
    _, sent = _stream_upload(app, [UPLOAD_HEAD] + [b"\0" * 8192] * 10, disconnect_after=5)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["kind"] == "disconnected"
    assert app.state.service.folder.files() == []
    app.state.service.close()


def test_unexpected_error_is_a_json_500_without_traceback(checkpoint: Path, engine: Engine,
                                                          photos, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /srv/models/x")

    with client_for(checkpoint, engine) as client:
        monkeypatch.setattr(client.app.state.service.engine, "analyse", broken)
        response = post(client, photos["paul_rudd"])
        is_one_line_error(response, 500, "internal")
        assert "secret" not in response.text
        assert 'deepfake_detect_errors_total{kind="internal"} 1.0' in client.get("/metrics").text
        assert uploads_left(client) == []


def test_sniffing_goes_by_content_never_the_name() -> None:
    assert sniff(b"\xff\xd8\xff\xe0" + b"\0" * 60)[0] == "image"
    assert sniff(b"\0\0\0\x18ftypisom" + b"\0" * 60)[:2] == ("video", "mp4")
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"webm")[:2] == ("video", "webm")
    assert sniff(b"RIFF\0\0\0\0AVI LIST")[:2] == ("video", "avi")
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ")[:2] == ("image", "webp")
    packets = bytearray(600)
    packets[0] = packets[188] = packets[376] = 0x47
    assert sniff(bytes(packets))[:2] == ("video", "mpegts")
    from deepfake_detect.serve.errors import ApiError

    with pytest.raises(ApiError, match="not an image or video"):
        sniff(b"%PDF-1.7 ...")


# -- access ----------------------------------------------------------------------------------


def test_token_guards_the_api_but_not_health_or_page(checkpoint: Path, engine: Engine,
                                                     photos) -> None:
    with client_for(checkpoint, engine, token="s3cret") as client:
        for method, url in (("get", "/v1/models"), ("get", "/metrics"), ("get", "/v1/jobs/x")):
            response = getattr(client, method)(url)
            is_one_line_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = getattr(client, method)(url, headers={"Authorization": "Bearer nope"})
            is_one_line_error(wrong, 401, "unauthorized")
        is_one_line_error(post(client, photos["paul_rudd"]), 401, "unauthorized")
        assert uploads_left(client) == []  # refused before a byte was written
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200
        assert post(client, photos["paul_rudd"], headers=good).json()["status"] == "ok"
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_token_from_the_environment(checkpoint: Path, engine: Engine, monkeypatch) -> None:
    monkeypatch.setenv("DEEPFAKE_DETECT_TOKEN", "from-env")
    with client_for(checkpoint, engine) as client:
        is_one_line_error(client.get("/v1/models"), 401)
        ok = client.get("/v1/models", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200


def test_cors_is_off_unless_an_origin_is_given(checkpoint: Path, engine: Engine) -> None:
    origin = "https://review.example.org"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    with client_for(checkpoint, engine) as client:
        assert "access-control-allow-origin" not in client.get("/v1/models",
                                                               headers={"Origin": origin}).headers
        assert "access-control-allow-origin" not in client.options("/v1/predict",
                                                                   headers=preflight).headers
    with client_for(checkpoint, engine, cors_origins=[origin]) as client:
        response = client.get("/v1/models", headers={"Origin": origin})
        assert response.headers["access-control-allow-origin"] == origin
        allowed = client.options("/v1/predict", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == origin
        other = client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_settings_are_checked() -> None:
    for bad in ({"port": 70000}, {"max_upload_mb": 0}, {"timeout_s": -1}, {"token": " "},
                {"cors_origins": ["example.org"]}, {"image_workers": 0}):
        with pytest.raises(ConfigError):
            ServeSettings(checkpoints=[Path("m.safetensors")], **bad).check()
    with pytest.raises(ConfigError, match="checkpoint"):
        ServeSettings().check()
    assert ServeSettings().host == "127.0.0.1"  # loopback unless asked


# -- concurrency -----------------------------------------------------------------------------


def test_concurrent_images_share_batches_and_stay_correct(checkpoint: Path, photos) -> None:
    files = [photos[name] for name in ("paul_rudd", "two_people", "kate_siegel", "paul_rudd",
                                       "two_people", "kate_siegel", "paul_rudd", "two_people")]
    rows, _ = predicted(checkpoint, sorted(set(files)))
    engine = load_engine(settings(checkpoint, batch_wait_ms=300))  # room for every request
    results: list = [None] * len(files)
    with client_for(checkpoint, engine) as client:
        barrier = threading.Barrier(len(files))

        def one(i: int) -> None:
            barrier.wait()
            results[i] = post(client, files[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(files))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert uploads_left(client) == []
    for path, response in zip(files, results):
        assert response.status_code == 200
        assert response.json()["p_fake"] == pytest.approx(rows[path].score, abs=1e-5)
    assert 1 <= engine.batches < len(files)


# -- a real server ---------------------------------------------------------------------------


def test_real_server_on_loopback(checkpoint: Path, engine: Engine, photos) -> None:
    import httpx

    path = photos["paul_rudd"]
    rows, _ = predicted(checkpoint, [path])
    app = create_app(settings(checkpoint), engine)
    with run_in_thread(app) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, timeout=60) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            response = http.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200
            assert response.json()["p_fake"] == pytest.approx(rows[path].score, abs=1e-5)
        folder = app.state.service.folder.path
        assert folder.stat().st_mode & 0o777 == 0o700  # private to the server's user
    assert not folder.exists()  # removed when the server stopped


# -- the command -----------------------------------------------------------------------------


def test_cli_serve_builds_the_app_and_runs_uvicorn(checkpoint: Path, monkeypatch) -> None:
    import uvicorn

    calls = {}

    def fake_run(app, host, port, **kwargs):
        calls.update(app=app, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(checkpoint), "--device",
                                          "cpu", "--port", "8123", "--token", "t"])
    assert result.exit_code == 0, result.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8123
    assert calls["app"].state.service.settings.token == "t"
    calls["app"].state.service.close()
    help_text = CliRunner().invoke(cli_app, ["serve", "--help"]).output
    assert "Examples" in help_text and "--max-upload-mb" in help_text
    bad = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(checkpoint), "--port", "-5"])
    assert bad.exit_code != 0
