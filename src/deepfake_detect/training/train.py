"""``train``: one function from a validated config to a run folder with checkpoints and reports."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)

from deepfake_detect.config.schema import ExperimentConfig
from deepfake_detect.data.clip_datamodule import ClipDataModule
from deepfake_detect.data.datamodule import FaceDataModule
from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.metrics import metrics_to_json
from deepfake_detect.evaluation.evaluate import evaluate_samples
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models.checkpoint import export_safetensors, load_model_parts
from deepfake_detect.data.feature_cache import FeatureCache
from deepfake_detect.data.transforms import augment_is_random
from deepfake_detect.models.registry import build_detector, validate_model_config
from deepfake_detect.models.strategies import apply_strategy, save_adapter, unused_strategy_keys
from deepfake_detect.runinfo import RUN_DIR_ENV, create_run_dir, write_run_info
from deepfake_detect.training.module import DetectorModule, monitor_mode
from deepfake_detect.training.run_folder import (
    AtomicCheckpointIO,
    RunFolder,
    check_resume_config,
    flatten,
    join_run_folder,
    open_run_folder,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    best_score: float | None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, Any] | None = None
    # data.holdout_groups: the held-out groups' set scored like the test split (never mixed in)
    heldout_metrics: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Mixed precision where it pays: bf16 on GPUs that have it, else fp16; off on CPU."""
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "auto":
        if on_gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[precision]


def _loggers(config: ExperimentConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    loggers: list = []
    if config.log.csv:
        loggers.append(CSVLogger(save_dir=run_dir, name="", version=""))
    if config.log.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
    mcfg = config.log.mlflow
    if mcfg.enabled:
        # Default: one local SQLite store beside the run folders, so `mlflow ui` shows every run
        # (MLflow 3 no longer accepts plain file stores by default).
        store = run_dir.resolve().parent
        uri = mcfg.tracking_uri or f"sqlite:///{store / 'mlflow.db'}"
        artifacts = None if mcfg.tracking_uri else (store / "mlartifacts").as_uri()
        loggers.append(
            MLFlowLogger(
                experiment_name=mcfg.experiment, run_name=run_dir.name, tracking_uri=uri,
                artifact_location=artifacts, log_model=False,
            )
        )
    return loggers


def launched_first() -> bool:
    """Whether this process is the first (or only) one of its launch, read from the launchers'
    variables (torchrun: RANK; SLURM: SLURM_PROCID; Lightning: NODE_RANK and LOCAL_RANK). Lightning
    sets the process's rank only inside ``fit``, after the run folder has been chosen."""
    keys = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")
    return all(os.environ.get(key, "0") in ("", "0") for key in keys)


def _step_checkpoint(run_dir: Path, every: int, datamodule: Any) -> ModelCheckpoint:
    """``last.ckpt`` every ``every`` steps as well. Only a streaming loader saves its position
    in the checkpoint (litdata's StreamingDataLoader is stateful); a sampler-driven loader (a
    folder's) would restart its epoch order on resume and repeat some samples while skipping
    others, so it is refused."""
    if not getattr(datamodule, "shard_streams", False):
        raise ConfigError(
            "train.checkpoint_every_n_steps needs data.path to be a shard dataset that streams "
            "(without data.holdout_groups or data.balance: sampler): only its loader can resume "
            "mid-epoch. Write one with `deepfake-detect shard DATA --out SHARDS` and train with "
            "data.path=SHARDS, or leave the key unset (epoch-end checkpoints)"
        )
    # The same file as the epoch-end callback: --resume takes whichever has more steps.
    return ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, monitor=None,
        every_n_train_steps=every, enable_version_counter=False,
    )


def train(
    config: ExperimentConfig,
    out: str | Path | None = None,
    resume: bool | str | Path = False,
    callbacks: list[Callback] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write everything into one run folder.

    ``out`` is the run folder (created; default ``<output_dir>/<name>-<timestamp>``). With
    ``resume`` the run in ``out`` (or the folder/checkpoint given) continues from ``last.ckpt``
    with its weights, optimizer, scheduler, epoch and random state.
    """
    started = time.time()
    model_cfg = validate_model_config(config.model)
    # Every process of a distributed launch runs this function. The first claims and locks the
    # run folder; the others join it: those Lightning starts on this machine find it in the
    # environment, those of torchrun, SLURM or other nodes by the --out they were given.
    lead = launched_first()
    if not lead:
        given = os.environ.get(RUN_DIR_ENV) or out
        folder = join_run_folder(Path(given) if given else None, resume)
    else:
        if out is None and resume and isinstance(resume, bool):
            raise ConfigError("--resume needs the run folder: pass --out RUN_DIR (or --resume RUN_DIR)")
        target = Path(out) if out is not None else None
        if target is None and not resume:
            target = create_run_dir(config.output_dir, config.name)
        folder = open_run_folder(target, resume)
    try:
        return _train(config, model_cfg, folder, callbacks, progress, started, lead)
    finally:
        folder.release()


def _train(
    config: ExperimentConfig,
    model_cfg,
    folder: RunFolder,
    callbacks: list[Callback] | None,
    progress: bool | None,
    started: float,
    lead: bool,
) -> TrainResult:
    run_dir, last_ckpt = folder.path, folder.checkpoint
    resumed = last_ckpt is not None
    for note in folder.notes:
        _print(f"[yellow]{note}[/yellow]")
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    L.seed_everything(config.seed, workers=True, verbose=False)

    update: dict = {"model": model_cfg.model_dump(mode="json")}
    # Crops made by `prepare`: predict on raw media must cut faces the way they were cut, so
    # the data's prepare.json wins over the config's prepare section.
    from deepfake_detect.data.prepare import read_prepare_settings

    if (found := read_prepare_settings(config.data.path)) is not None:
        if "prepare" in config.model_fields_set and found != config.prepare:
            _print("prepare: the config's prepare section differs from how the training crops "
                   "were made (the data's prepare.json); the latter is stored with the model")
        update["prepare"] = found
    resolved = config.model_copy(update=update)
    changes: dict = {}
    if resumed:  # the saved config is the truth; only the resumable keys may change
        changes = check_resume_config(run_dir, resolved.model_dump(mode="json"))
        for key, (old, new) in changes.items():
            _print(f"resume: {key} changes from {old!r} to {new!r}")
    if lead:
        write_run_info(
            run_dir, resolved.model_dump(mode="json"), tool_command="train",
            resumed_from=str(last_ckpt) if resumed else None,
            resume_changes={k: list(v) for k, v in changes.items()} or None,
        )

    detector = build_detector(model_cfg)
    counts = apply_strategy(detector, config.strategy)
    # Detectors of frame sequences (their preprocessing names a clip) train on clips of videos.
    data_cls = ClipDataModule if "sequence" in detector.preprocessing() else FaceDataModule
    datamodule = data_cls(
        config.data, detector.preprocessing(), seed=config.seed,
        prepare=resolved.prepare, cache_root=config.output_dir,
    )
    if config.eval.tta is not None:  # a bad spec fails now, not after training
        from deepfake_detect.inference.tta import parse_tta

        parse_tta(config.eval.tta)
    if config.eval.perturb:  # likewise a bad robustness spec
        from deepfake_detect.data.perturb import parse_perturbations

        parse_perturbations(config.eval.perturb)
    if data_cls is ClipDataModule and config.data.augment.cutmix_alpha > 0:
        raise ConfigError(
            "data.augment.cutmix_alpha: cutmix cuts boxes out of images, not clips; the video "
            f"detector {model_cfg.name!r} takes mixup_alpha only (set cutmix_alpha: 0)"
        )
    datamodule.setup("fit")
    if lead:
        _print(datamodule.summary())
    weights = datamodule.class_weights() if config.data.balance == "loss_weight" else None
    cache = _feature_cache(config, datamodule, detector)
    datamodule.feature_cache = cache
    module = DetectorModule(detector, resolved, class_weights=weights, feature_cache=cache)
    if lead:
        _print(f"strategy {config.strategy.name}: {counts} parameters")
        unused = unused_strategy_keys(config.strategy)
        if unused:
            _print(f"strategy {config.strategy.name} does not use: {', '.join(unused)}")

    tcfg = config.train
    show_progress = config.log.progress if progress is None else progress
    mode = monitor_mode(tcfg.monitor)
    checkpoint_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=tcfg.monitor, mode=mode,
        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
    )
    # A second callback rather than save_last: Lightning 2.6 refreshes save_last only in
    # epochs that also improved the best checkpoint, which would make --resume go back in time.
    last_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, monitor=None,
        enable_version_counter=False,
    )
    cbs: list[Callback] = [checkpoint_cb, last_cb, *(callbacks or [])]
    if tcfg.checkpoint_every_n_steps:
        cbs.append(_step_checkpoint(run_dir, tcfg.checkpoint_every_n_steps, datamodule))
    if tcfg.early_stopping_patience:
        cbs.append(EarlyStopping(monitor=tcfg.monitor, mode=mode, patience=tcfg.early_stopping_patience))
    # Read before the CSV logger starts: it deletes an existing metrics.csv.
    history = _read_csv(run_dir / "metrics.csv") if resumed else []
    loggers = _loggers(resolved, run_dir)
    if lead:
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                  for k, v in flatten(resolved.model_dump(mode="json")).items()}
        for lg in loggers:
            lg.log_hyperparams(params)
    if loggers:
        cbs.append(LearningRateMonitor(logging_interval="epoch"))
    if show_progress:
        cbs.append(RichProgressBar(leave=True))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=tcfg.epochs,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=resolve_precision(tcfg.precision, tcfg.accelerator),
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        gradient_clip_val=tcfg.gradient_clip_val,
        deterministic=tcfg.deterministic,
        logger=loggers or False,
        callbacks=cbs,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=config.log.every_n_steps,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=tcfg.limit_train_batches,
        limit_val_batches=tcfg.limit_val_batches,
        # New loaders each epoch only when cached features can replace the images.
        reload_dataloaders_every_n_epochs=1 if cache is not None else 0,
    )
    with warnings.catch_warnings():
        if detector.frozen_children:  # the feature_extractor strategy keeps them in eval mode
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(module, datamodule=datamodule, ckpt_path=last_ckpt,
                    weights_only=True)
    if history and trainer.global_rank == 0:
        _prepend_history(run_dir / "metrics.csv", history)

    best = Path(checkpoint_cb.best_model_path) if checkpoint_cb.best_model_path else None
    score = checkpoint_cb.best_model_score
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best,
        best_score=float(score) if score is not None else None,
        val_metrics=dict(module.val_metrics),
        skipped={**dict(datamodule.skipped), **module.skipped},
    )
    if trainer.global_rank != 0:
        return result
    if cache is not None:
        for note in cache.notes:
            _print(note)
    if best is not None:
        if config.strategy.name == "peft_lora":
            trained, trained_meta = load_model_parts(best, inference=False)
            save_adapter(trained, run_dir / "adapter", trained_meta)
        best_model = LoadedModel.load(best)
        export_safetensors(best_model.module, run_dir / "model.safetensors", best_model.meta)
        options = ScoringOptions(
            batch_size=config.data.eval_batch_size or config.data.batch_size,
            num_workers=config.data.num_workers, tta=config.eval.tta, progress=show_progress,
        )
        # the in-distribution test split and the held-out groups: scored apart, never mixed
        sets = [("test", datamodule.samples("test") if tcfg.evaluate_test else [])]
        if config.data.holdout_groups:  # asked for by name: scored even without evaluate_test
            sets.append(("heldout", datamodule.samples("heldout")))
        rule = config.eval.threshold
        origin = (f"fixed (eval.threshold.value {rule.value})" if rule.strategy == "fixed"
                  else f"chosen on validation (eval.threshold.strategy {rule.strategy})")
        for name, samples in sets:
            if not samples:
                continue
            metrics = evaluate_samples(
                best_model, samples, run_dir / name, threshold=best_model.threshold,
                video_aggregation=config.eval.video_aggregation, plots=config.eval.plots,
                name=name, options=options, bootstrap=config.eval.bootstrap,
                seed=config.eval.seed, threshold_origin=origin,
                data_path=", ".join(str(p) for p in config.data.path),
            )
            if config.eval.perturb and best_model.input_kind == "images":
                # robustness of the final model on the same set (eval.perturb), kept apart
                from deepfake_detect.evaluation.robustness import robustness_sweep

                sweep = robustness_sweep(
                    best_model, samples, config.eval.perturb, run_dir / name,
                    best_model.threshold, config.eval.video_aggregation, options, name=name,
                    bootstrap=config.eval.bootstrap, seed=config.eval.seed,
                )
                metrics["robustness"] = {"rows": sweep["rows"], "dir": str(sweep["dir"])}
            if name == "test":
                result.test_metrics = metrics
            else:
                result.heldout_metrics = metrics
            result.skipped.update({e["path"]: e["error"] for e in metrics["skipped_files"]})
        if result.heldout_metrics is not None:
            _print_side_by_side(result, config.data.holdout_groups)
    _write_report(run_dir, result, datamodule, tcfg.monitor, time.time() - started)
    if config.eval.plots and (run_dir / "metrics.csv").is_file():
        from deepfake_detect.evaluation.plots import plot_learning_curves

        plot_learning_curves(run_dir / "metrics.csv", run_dir / "learning_curves.png")
    _log_mlflow_artifacts(loggers, run_dir, config.log.mlflow.log_model)
    return result


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _prepend_history(path: Path, history: list[dict[str, str]]) -> None:
    """Lightning's CSV logger starts a fresh file on resume; put the earlier epochs back."""
    new = _read_csv(path)
    first_step = min((int(r["step"]) for r in new if r.get("step")), default=None)
    kept = [r for r in history if first_step is None or int(r.get("step") or 0) < first_step]
    fields = list(dict.fromkeys(k for row in (*kept, *new) for k in row))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*kept, *new])


def _print(text: Any) -> None:
    from rich.console import Console

    Console(stderr=True).print(text)


def _feature_cache(config: ExperimentConfig, dm: FaceDataModule, detector) -> FeatureCache | None:
    """The feature cache of the feature_extractor strategy, over the splits it is valid for."""
    strategy = config.strategy
    if strategy.name != "feature_extractor" or not strategy.cache_features:
        return None
    if isinstance(dm, ClipDataModule) or not detector.splits_features():
        _print(f"feature cache: off, detector {detector.config.name!r} does not split off "
               "per-image features to store")
        return None
    if config.train.num_nodes > 1 or config.train.devices not in ("auto", 1, "1"):
        _print("feature cache: off, as each process would hold only its own share of features")
        return None
    sizes = {"val": len(dm.samples("val"))}
    if augment_is_random(config.data.augment):
        _print("feature cache: validation only; training views change every epoch "
               "(data.augment is random)")
    else:
        sizes["train"] = len(dm.samples("train"))
    return FeatureCache(sizes, strategy.cache_max_gb * 2**30)


def _print_side_by_side(result: TrainResult, groups: list[str]) -> None:
    """The in-distribution test's and the held-out groups' figures, side by side."""
    from rich.table import Table

    from deepfake_detect.evaluation.evaluate import summary_rows

    columns = {"held-out groups (" + ", ".join(groups) + ")": result.heldout_metrics}
    if result.test_metrics is not None:
        columns = {"in-distribution test": result.test_metrics, **columns}
    rows = {name: dict(summary_rows(metrics)) for name, metrics in columns.items()}
    table = Table(title="test results")
    table.add_column("")
    for name in columns:
        table.add_column(name)
    keys: list[str] = []  # both columns' rows, each in its order (their group rows differ)
    for per in rows.values():
        at = 0
        for key in per:
            if key not in keys:
                keys.insert(at, key)
            at = keys.index(key) + 1
    for key in keys:
        table.add_row(key, *(per.get(key, "") for per in rows.values()))
    _print(table)


def _write_report(run_dir: Path, result: TrainResult, dm: FaceDataModule, monitor: str, seconds: float) -> None:
    report = {
        "run_dir": str(run_dir),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "monitor": monitor,
        "best_score": result.best_score,
        "last_val_metrics": result.val_metrics,
        "class_counts": dm.class_counts(),
        **({"video_counts": dm.video_counts(), "short_videos_padded": dm.short_videos()}
           if isinstance(dm, ClipDataModule) else {}),
        "skipped": len(result.skipped),
        "skipped_files": [{"path": p, "error": e} for p, e in sorted(result.skipped.items())],
        "test": result.test_metrics and {k: result.test_metrics[k] for k in ("frame", "video")},
        **_heldout_report(result, dm),
        "seconds": round(seconds, 1),
    }
    (run_dir / "report.json").write_text(json.dumps(metrics_to_json(report), indent=2), "utf-8")


def _heldout_report(result: TrainResult, dm: FaceDataModule) -> dict[str, Any]:
    """``{"heldout": ...}`` beside "test" when data.holdout_groups is set (else nothing): which
    groups, where its reals come from, its images per class and its frame / video metrics."""
    if dm.heldout_reals_from is None:
        return {}
    held = result.heldout_metrics
    return {"heldout": {
        "groups": list(dm.data.holdout_groups),
        "reals_from": dm.heldout_reals_from,
        "class_counts": dm.heldout_counts(),
        "frame": held and held["frame"],
        "video": held and held["video"],
    }}


def _log_mlflow_artifacts(loggers: list, run_dir: Path, log_model: bool) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            client, run_id = lg.experiment, lg.run_id
            names = ["config.yaml", "report.json", "learning_curves.png"]
            if log_model:
                names.append("model.safetensors")
            for name in names:
                if (run_dir / name).is_file():
                    client.log_artifact(run_id, str(run_dir / name))
            for name in ("test", "heldout"):
                if (run_dir / name).is_dir():
                    client.log_artifacts(run_id, str(run_dir / name), artifact_path=name)
