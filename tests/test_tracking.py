from __future__ import annotations

from conftest import make_dataset, tiny_config
from deepfake_detect.config import load_config
from deepfake_detect.training.train import train


def test_mlflow_file_store_gets_params_metrics_and_artifacts(tmp_path):
    data = make_dataset(tmp_path / "d", videos_per_class=4, frames=2, splits=("train", "val"))
    base = tiny_config(data, tmp_path / "runs", epochs=2)
    base["log"] = {**base["log"], "tensorboard": True, "mlflow": {"enabled": True, "experiment": "unit"}}
    result = train(load_config(base=base), out=tmp_path / "run")

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unit")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert len(history) == 2
    assert history[-1].value == result.val_metrics["val_auc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report.json", "model.safetensors"} <= artifacts
    assert any((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert run.data.params["train.optimizer.lr"] == "0.003"
    assert run.data.params["model.timm_name"] == "test_resnet"


def test_mlflow_tracking_server_on_loopback(tmp_path):
    """A real `mlflow server` (SQLite store, served artifacts): a tiny run logs to it over HTTP
    and the metrics, params and artifacts read back through the MLflow client."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not come up in 120 s"
            time.sleep(0.5)

        data = make_dataset(tmp_path / "d", videos_per_class=4, frames=2, splits=("train", "val"))
        base = tiny_config(data, tmp_path / "runs", epochs=2)
        base["log"] = {**base["log"], "mlflow": {"enabled": True, "experiment": "served",
                                                  "tracking_uri": uri}}
        result = train(load_config(base=base), out=tmp_path / "run")

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [round(m.value, 6) for m in history][-1] == round(result.val_metrics["val_loss"], 6)
        assert len(history) == 2
        assert run.data.params["model.timm_name"] == "test_resnet"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "model.safetensors", "learning_curves.png"} <= artifacts
        assert any((tmp_path / "served").rglob("model.safetensors"))  # stored by the server
    finally:
        server.terminate()
        server.wait(timeout=30)
