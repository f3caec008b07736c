from __future__ import annotations

from conftest import make_dataset, tiny_config
from deepfake_detect.config import load_config
from deepfake_detect.training.runner import train


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
