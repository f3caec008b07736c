"""The ``deepfake-detect`` command line: argument parsing only; the work lives in the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deepfake_detect import __version__
from deepfake_detect.errors import DeepfakeDetectError

app = typer.Typer(
    name="deepfake-detect",
    help="Adapt, evaluate and run face-forgery (deepfake) detectors.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    # The advanced trainer's flags are spelt with underscores (--use_mixup, --batch_size):
    # every option accepts both spellings.
    context_settings={"help_option_names": ["-h", "--help"],
                      "token_normalize_func": lambda token: token.replace("_", "-")},
)
console = Console(stderr=True)
out_console = Console()


def _version(value: bool) -> None:
    if value:
        out_console.print(f"deepfake-detect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Adapt, evaluate and run face-forgery (deepfake) detectors."""


Checkpoint = Annotated[
    Path,
    typer.Option(help="A .ckpt or .safetensors written by train; with --config, any weights "
                 "file that model reads (e.g. an official release)."),
]
Checkpoints = Annotated[
    list[Path],
    typer.Option("--checkpoint", help="A .ckpt or .safetensors written by train, or a .onnx "
                 "written by export --format onnx (run with ONNX Runtime); with --config: any "
                 "weights file that model reads. Repeat it to combine several checkpoints as an "
                 "ensemble, or give one ensemble .yaml (written by calibrate)."),
]
EnsembleMethod = Annotated[str | None, typer.Option(
    "--ensemble", metavar="METHOD",
    help="How several checkpoints vote: soft (weighted mean of P(fake), default), hard (weighted "
    "share of fake votes at each checkpoint's threshold) or logits (weighted mean fake logit).")]
Weights = Annotated[str | None, typer.Option(
    "--weights", metavar="W1,W2,..",
    help="Ensemble weights, one per --checkpoint (normalised to sum 1; default equal; "
    "calibrate fits them on validation data).")]
ModelYaml = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML with the model section, to read a --checkpoint "
                 "that was not written by this tool (e.g. configs/effort.yaml)."),
]
def _check_threshold(value: float | None) -> float | None:
    from deepfake_detect.config.loading import check_threshold

    return check_threshold(value)


Threshold = Annotated[
    float | None, typer.Option(help="Decision threshold in [0, 1] (default: the checkpoint's).",
                               callback=_check_threshold)
]
Bootstrap = Annotated[int, typer.Option(
    min=0, max=100000, metavar="N",
    help="Bootstrap resamples (of whole videos, stratified by class) behind the 95% interval of "
    "every metric; 0: no intervals.")]
Seed = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the bootstrap resampling.")]
Perturb = Annotated[list[str] | None, typer.Option(
    "--perturb", metavar="KIND:S1,S2",
    help="Robustness sweep, repeatable: re-score every face crop degraded as an upload would be "
    "(before the model's preprocessing), at each severity: jpeg:90,70,50,30 (quality), "
    "blur:1,2,3 (sigma px), resize:0.75,0.5,0.25 (down and back up), noise:0.02,0.05, "
    "contrast:0.5. Decoded once; AUC-vs-severity curves, robustness.csv.")]
GroupDepth = Annotated[int | None, typer.Option(
    min=0, max=8, help="Folder levels under the label folder that name a sample's group "
    "(fake/<method>/<video>/: 1); default: recognised; 0: no folder groups.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Write into a non-empty folder, or replace a file, that deepfake-detect did "
    "not write (inputs are never overwritten).")]
BatchSize = Annotated[int, typer.Option(help="Images per batch.")]
Workers = Annotated[int | None, typer.Option(help="Data loading workers (default: CPU count, max 8).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")]
TTA = Annotated[str | None, typer.Option(
    "--tta", metavar="SPEC",
    help="Test-time augmentation: mean P(fake) over views, comma-separated: hflip, scale:S "
    "(e.g. scale:0.9), five_crop[:F] (corners + centre, F=0.875); 'default' = identity + hflip "
    "(identity is always used). Applies to face crops, the faces found in videos and photos, "
    "and the clips of video detectors (every frame alike).")]
MCDropout = Annotated[int, typer.Option(
    "--mc-dropout", metavar="N", min=0,
    help="Monte-Carlo dropout: N >= 2 passes with dropout on; mean and score_std per input "
    "(needs a model with dropout, e.g. model.drop_rate); for a video, the spread of its score.")]


_FLAGS = "Advanced-trainer flags (each sets the config key named; underscores work too)"


def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]{line}[/cyan]" for line in lines)


@app.command(
    epilog=_examples(
        "deepfake-detect quickstart",
        "deepfake-detect quickstart --out runs/demo --seed 1",
    )
)
def quickstart(
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/quickstart-<time>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data generation and training.")] = 0,
) -> None:
    """Generate a synthetic face-forgery dataset, train a small detector on it, evaluate, predict.

    Needs no data and no download; takes a few minutes on a laptop CPU.
    """
    from deepfake_detect.demo.quickstart import run_quickstart

    run_quickstart(out, seed=seed)


@app.command(
    epilog=_examples(
        "deepfake-detect train -c configs/mobilenetv2.yaml data.path=/data/ff++",
        "deepfake-detect train -c configs/xception.yaml --out runs/x1 train.epochs=3 data.batch_size=16",
        "deepfake-detect train --out runs/x1 --resume train.epochs=20",
        "deepfake-detect train -c configs/fsfm.yaml --strategy peft_lora model.pretrained=fsfm/checkpoint-400.pth data.path=/data/faces",
        "deepfake-detect train -c configs/fsfm.yaml --strategy feature_extractor strategy.cache_features=true data.augment.hflip=0",
        "deepfake-detect train -c configs/efficientnet_advanced.yaml --data /data/faces --use_mixup --use_amp --loss focal --scheduler cosine --epochs 30 --batch_size 16 --early_stopping 10",
        "deepfake-detect train -c configs/swin_advanced.yaml --data /data/faces --use_tta --accumulation_steps 4",
    )
)
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML (see configs/); with --resume, default: the run's saved config.yaml.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides key=value, e.g. train.epochs=3")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default <output_dir>/<name>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its newest complete checkpoint (its saved config is the truth; only epochs and the like may change).")] = False,
    strategy: Annotated[
        str | None,
        typer.Option(help="fine_tuning, feature_extractor or peft_lora: the same as strategy.name=NAME."),
    ] = None,
    data: Annotated[list[Path] | None, typer.Option(help="Dataset folder or CSV, or a shard dataset (folder or s3://, gs://, azure:// URI): data.path (repeatable).", rich_help_panel=_FLAGS)] = None,
    epochs: Annotated[int | None, typer.Option(help="train.epochs", rich_help_panel=_FLAGS)] = None,
    batch_size: Annotated[int | None, typer.Option(help="data.batch_size", rich_help_panel=_FLAGS)] = None,
    lr: Annotated[float | None, typer.Option(help="train.optimizer.lr", rich_help_panel=_FLAGS)] = None,
    loss: Annotated[str | None, typer.Option(help="train.loss.name: ce, bce or focal", rich_help_panel=_FLAGS)] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="train.loss.label_smoothing", rich_help_panel=_FLAGS)] = None,
    scheduler: Annotated[str | None, typer.Option(help="train.scheduler.name: none, cosine, plateau, onecycle, step", rich_help_panel=_FLAGS)] = None,
    accumulation_steps: Annotated[int | None, typer.Option(help="train.accumulate_grad_batches", rich_help_panel=_FLAGS)] = None,
    early_stopping: Annotated[int | None, typer.Option(help="train.early_stopping_patience", rich_help_panel=_FLAGS)] = None,
    attention: Annotated[str | None, typer.Option(help="model.attention: none, se or cbam", rich_help_panel=_FLAGS)] = None,
    use_mixup: Annotated[bool | None, typer.Option("--use-mixup/--no-mixup", help="mixup + cutmix on (the recipe's strengths, else data.augment.mixup_alpha=0.2, cutmix_alpha=1.0) or off", rich_help_panel=_FLAGS)] = None,
    use_randaugment: Annotated[bool | None, typer.Option("--use-randaugment/--no-randaugment", help="data.augment.randaugment: the recipe's ops, else 2; or 0", rich_help_panel=_FLAGS)] = None,
    use_amp: Annotated[bool | None, typer.Option("--use-amp/--no-amp", help="train.precision=auto (bf16/fp16 on a GPU) or 32", rich_help_panel=_FLAGS)] = None,
    use_tta: Annotated[bool | None, typer.Option("--use-tta/--no-tta", help="eval.tta for the test split: the recipe's views, else default (identity + hflip); or none", rich_help_panel=_FLAGS)] = None,
    use_mlflow: Annotated[bool | None, typer.Option("--use-mlflow/--no-mlflow", help="log.mlflow.enabled", rich_help_panel=_FLAGS)] = None,
) -> None:
    """Fine-tune a detector. Writes config, logs, checkpoints, metrics and plots to one run folder.

    The strategy decides what trains: everything (fine_tuning, optionally with frozen layers and
    layer-wise lr decay), only the head (feature_extractor) or LoRA adapters plus the head
    (peft_lora, adapters also saved alone in <run>/adapter).
    """
    from deepfake_detect.config import load_config
    from deepfake_detect.config.flags import flag_overrides
    from deepfake_detect.training.train import train as run_train

    if config is None:
        if not (resume and out is not None):
            raise typer.BadParameter("give the experiment YAML (--config FILE)", param_hint="--config")
        config = out / "config.yaml"
    extra = [f"strategy.name={strategy}"] if strategy is not None else []
    if data:
        import json

        extra.append("data.path=" + json.dumps([str(p) for p in data]))  # JSON is YAML
    cfg = load_config(config, [*(overrides or []), *extra])
    flags = flag_overrides(cfg, dict(
        epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, label_smoothing=label_smoothing,
        scheduler=scheduler, accumulation_steps=accumulation_steps, early_stopping=early_stopping,
        attention=attention, use_mixup=use_mixup, use_randaugment=use_randaugment,
        use_amp=use_amp, use_tta=use_tta, use_mlflow=use_mlflow,
    ))
    if flags:
        cfg = load_config(config, [*(overrides or []), *extra, *flags])
    result = run_train(cfg, out=out, resume=resume)
    if result.best_checkpoint is None:
        return
    console.print(f"[green]best checkpoint[/green] {result.best_checkpoint} ({cfg.train.monitor} = {result.best_score:.4f})")
    # with held-out groups, training has printed the test split and them side by side
    if result.test_metrics and not result.heldout_metrics:
        _print_metrics({"test": result.test_metrics})
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} files skipped[/yellow] (listed in {result.run_dir / 'report.json'})")
    console.print(f"run folder: {result.run_dir}")


@app.command(
    epilog=_examples(
        "deepfake-detect evaluate --checkpoint runs/x1/checkpoints/best.ckpt --data /data/celeb-df",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data a/ --data b.csv --split all",
        "deepfake-detect evaluate -c configs/effort.yaml --checkpoint effort_clip_L14_trainOn_FaceForensic.pth --data cdf/ --data dfdc/",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data cdf/ --tta hflip,scale:0.9,scale:1.1",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data cdf/ --mc-dropout 8",
        "deepfake-detect evaluate --checkpoint runs/b4/model.safetensors --checkpoint runs/swin/model.safetensors --weights 2,1 --data cdf/",
        "deepfake-detect evaluate --checkpoint runs/ensemble.yaml --data cdf/ --data dfdc/",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data ffpp/ --bootstrap 2000 --seed 1",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data cdf/ --perturb jpeg:90,70,50,30 --perturb blur:1,2,3",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data s3://bucket/ffpp-shards --split test",
    )
)
def evaluate(
    checkpoint: Checkpoints,
    data: Annotated[list[Path], typer.Option(help="Dataset folder or CSV manifest, or a shard dataset (folder or s3://, gs://, azure:// URI); repeatable.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/evaluate-<time>).")] = None,
    split: Annotated[str, typer.Option(help="auto (test split if present, else all), test, val, train, all.")] = "auto",
    threshold: Threshold = None,
    video_aggregation: Annotated[str | None, typer.Option(help="mean, max, median, sbi or confident.")] = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
    plots: Annotated[bool, typer.Option(help="Write ROC, PR, confusion and histogram PNGs.")] = True,
    config: ModelYaml = None,
    tta: TTA = None,
    mc_dropout: MCDropout = 0,
    ensemble: EnsembleMethod = None,
    weights: Weights = None,
    force: Force = False,
    bootstrap: Bootstrap = 1000,
    seed: Seed = 0,
    perturb: Perturb = None,
    group_depth: GroupDepth = None,
) -> None:
    """Frame- and video-level AUC, EER, AP, ACC, F1 per dataset with 95% bootstrap
    intervals, and per group (manipulation method) when the fakes have groups;
    predictions.csv, groups.csv and plots.

    Several --checkpoint options (or an ensemble file) are evaluated as one ensemble; each
    checkpoint reads the images with its own input size and normalisation, and metrics.json
    lists every member's own metrics beside the ensemble's.
    """
    from deepfake_detect.evaluation.evaluate import EvaluateRequest
    from deepfake_detect.evaluation.evaluate import evaluate as run_evaluate

    request = EvaluateRequest(
        model=_model_source(checkpoint, config, ensemble, weights), data=data, out_dir=out,
        split=split, threshold=threshold, video_aggregation=video_aggregation, plots=plots,
        force=force, options=_options(batch_size, workers, device, tta, mc_dropout),
        bootstrap=bootstrap, seed=seed, perturb=perturb or [], group_depth=group_depth,
    )
    evaluation = run_evaluate(_checked(request))
    _print_evaluation(evaluation.results)
    console.print(f"results: {evaluation.out_dir}")


@app.command(
    epilog=_examples(
        "deepfake-detect benchmark --checkpoint runs/b4/model.safetensors --checkpoint runs/effort/model.safetensors --data ffpp_test/ --data cdf/ --data dfdc/",
        "deepfake-detect benchmark --config benchmark.yaml --out runs/cross-dataset",
        "deepfake-detect benchmark --checkpoint a.safetensors --checkpoint b.safetensors --data cdf/ --perturb jpeg:90,70,50,30",
    )
)
def benchmark(
    checkpoint: Annotated[list[Path] | None, typer.Option(
        "--checkpoint", help="A checkpoint (or ensemble .yaml) to compare; repeatable: each is "
        "one row of the matrix.")] = None,
    data: Annotated[list[Path] | None, typer.Option(
        help="Dataset folder or CSV manifest, or a shard dataset (folder or s3://... URI); repeatable: each is one column.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML with `checkpoints:` and `data:` lists (paths, or "
        "{path, name, config}) and optionally split, perturb, bootstrap, seed, group_depth; "
        "the command line's --checkpoint/--data are added to its lists.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/benchmark-<time>).")] = None,
    split: Annotated[str | None, typer.Option(help="auto (test split if present, else all), test, val, train, all.")] = None,
    video_aggregation: Annotated[str | None, typer.Option(help="mean, max, median, sbi or confident (default: each checkpoint's).")] = None,
    perturb: Perturb = None,
    bootstrap: Annotated[int | None, typer.Option(min=0, max=100000, metavar="N", help="Bootstrap resamples behind every interval and paired difference (default 1000; 0: none).")] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=2**32 - 1, help="Seed of the bootstrap resampling (default 0).")] = None,
    group_depth: GroupDepth = None,
    plots: Annotated[bool, typer.Option(help="Also each cell's ROC, PR, confusion and histogram PNGs.")] = False,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
    tta: TTA = None,
    force: Force = False,
) -> None:
    """Every checkpoint on every dataset: the matrix of frame AUC, video AUC, EER and AP with
    95% intervals (matrix.csv, matrix.md, heatmaps), and for each pair of checkpoints the
    paired difference of AUC on the same samples with its interval and DeLong's test.

    Each cell is a plain `evaluate` (cells/<checkpoint>/<dataset>/); videos are cut into faces
    once per dataset and face settings, shared by the checkpoints.
    """
    from deepfake_detect.config.loading import read_yaml, validate
    from deepfake_detect.config.schema import BenchmarkConfig
    from deepfake_detect.evaluation.benchmark import BenchmarkRequest, name_entries
    from deepfake_detect.evaluation.benchmark import benchmark as run_benchmark

    raw = read_yaml(config) if config is not None else {}
    listed = validate(BenchmarkConfig, raw if isinstance(raw, dict) else {}, "benchmark",
                      str(config or ""))
    given = {"split": split, "video_aggregation": video_aggregation, "bootstrap": bootstrap,
             "seed": seed, "group_depth": group_depth}
    settings = listed.model_copy(update={k: v for k, v in given.items() if v is not None})
    request = BenchmarkRequest(
        checkpoints=name_entries([*settings.entries("checkpoints"), *(checkpoint or [])],
                                 "checkpoint"),
        data=name_entries([*settings.entries("data"), *(data or [])], "dataset"),
        out_dir=out, split=settings.split, video_aggregation=settings.video_aggregation,
        perturb=[*settings.perturb, *(perturb or [])], bootstrap=settings.bootstrap,
        seed=settings.seed, group_depth=settings.group_depth, plots=plots, force=force,
        options=_options(batch_size, workers, device, tta),
    )
    result = run_benchmark(_checked(request))
    _print_benchmark(result)
    console.print(f"results: {result.out_dir} (matrix.md, matrix.csv, comparisons.csv)")


@app.command(
    epilog=_examples(
        "deepfake-detect predict --checkpoint runs/x1/model.safetensors photos/ --out preds.csv",
        "deepfake-detect predict --checkpoint best.ckpt clip.mp4 videos/ --aggregation confident --per-frame faces.csv",
        "deepfake-detect predict --checkpoint best.ckpt group_photo.jpg --aggregation max --per-frame faces.csv",
        "deepfake-detect predict --checkpoint best.ckpt photo.jpg --select largest --json preds.json",
        "deepfake-detect predict --checkpoint runs/x1/model.safetensors --crops face_crops/ --out preds.csv",
        "deepfake-detect predict -c configs/effort.yaml --checkpoint effort_clip_L14_trainOn_FaceForensic.pth --crops faces/",
        "deepfake-detect predict --checkpoint runs/f1/model.safetensors test/ --format submission --out submission.csv",
        "deepfake-detect predict --checkpoint runs/ds/model.safetensors --video-dir faces/clip_007 clip_008.mp4",
        "deepfake-detect predict --checkpoint best.ckpt faces/ --tta default --out preds.csv",
        "deepfake-detect predict --checkpoint best.ckpt faces/ --mc-dropout 8 --out preds.csv",
        "deepfake-detect predict --checkpoint best.ckpt clip.mp4 --tta default --mc-dropout 8",
        "deepfake-detect predict --checkpoint runs/b3/model.safetensors --checkpoint runs/swin/model.safetensors --ensemble logits faces/",
        "deepfake-detect predict --checkpoint runs/ensemble.yaml videos/ --out preds.csv",
        "deepfake-detect predict --checkpoint best.ckpt group_photo.jpg clip.mp4 --explain heatmaps/ --per-frame faces.csv",
        "deepfake-detect predict --checkpoint best.ckpt --crops faces/ --explain heatmaps/ --out preds.csv",
    )
)
def predict(
    checkpoint: Checkpoints,
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Face crops, photos, videos or folders of them.")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        help="CSV file (filename,label,score,frames,faces,error[,score_std][,logit_var],status; "
        "status: ok, no_face or error).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    threshold: Threshold = None,
    crops: Annotated[bool, typer.Option(
        "--crops", help="The images are face crops already: score them as they are, without "
        "face detection (videos are always cut into faces).")] = False,
    detect_faces: Annotated[bool | None, typer.Option(
        "--detect-faces/--no-detect-faces",
        help="Older spelling: --detect-faces is the default (faces found in every photo and "
        "video), --no-detect-faces is --crops.")] = None,
    select: Annotated[str, typer.Option(
        help="Which faces of a photo or frame are scored: all (default), largest, or relative "
        "(at least crop.min_relative_size of the largest). Their crop geometry is the "
        "checkpoint's.")] = "all",
    aggregation: Annotated[str, typer.Option(help="Per-file score from face scores: mean, sbi, confident, max, median.")] = "mean",
    per_frame: Annotated[Path | None, typer.Option(help="Also write one row per scored face here (CSV).")] = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
    config: ModelYaml = None,
    output_format: Annotated[
        str, typer.Option("--format", help="csv: filename,label,score,frames,faces,error,...,"
                          "status; submission: exactly filename,label (base names, sorted).")
    ] = "csv",
    fail_label: Annotated[
        int, typer.Option(min=0, max=1, help="submission: label of files that could not be scored.")
    ] = 1,
    video_dir: Annotated[
        list[Path] | None,
        typer.Option(help="A folder of one video's face-crop frames, scored as one video by a "
                     "video detector (dual_stream); repeatable."),
    ] = None,
    tta: TTA = None,
    mc_dropout: MCDropout = 0,
    ensemble: EnsembleMethod = None,
    weights: Weights = None,
    force: Force = False,
    explain: Annotated[Path | None, typer.Option(
        help="Also write a heatmap of every scored face into this folder: "
        "<file stem>/<frame:05d>_<face>.png, Grad-CAM of the fake logit blended on the crop "
        "(--per-frame gains a heatmap column). Image detectors only; an ensemble is explained "
        "with its first checkpoint. Slower: each face needs a backward pass.")] = None,
) -> None:
    """Score photos and videos: label 1 = fake at the checkpoint's threshold, score = P(fake).

    Every photo and video is cut into faces the way the checkpoint was trained (its crop
    size, margin and alignment); every face found is scored (--select) and the file's score
    is --aggregation over its faces and frames. A file without a face gets status no_face
    and no score. Images that are face crops already are scored as they are with --crops.
    With --format submission a file without a score still gets a row (--fail-label) and is
    listed on the console.
    A video detector (dual_stream) scores each video (or --video-dir folder of frames) as the
    mean over evenly spaced clips; then `faces` counts the clips. Several --checkpoint options
    (or an ensemble .yaml) score as one ensemble; score_std is then the members' spread.
    """
    from deepfake_detect.inference.predict import PredictRequest
    from deepfake_detect.inference.predict import predict as run_predict

    request = PredictRequest(
        model=_model_source(checkpoint, config, ensemble, weights), inputs=inputs or [],
        video_dirs=video_dir or [], threshold=threshold, crops=crops, detect_faces=detect_faces,
        select=select, aggregation=aggregation, out=out, json_out=json_out, per_frame=per_frame,
        format=output_format, fail_label=fail_label, force=force, explain=explain,
        options=_options(batch_size, workers, device, tta, mc_dropout),
    )
    report = run_predict(_checked(request))
    for r in report.unscored:
        console.print(f"[yellow]not scored, labelled {fail_label}[/yellow]: {escape(r.filename)} ({escape(r.error)})")
    if output_format == "submission" and report.shared_names:
        console.print("[yellow]some inputs share a file name; their submission rows are ambiguous[/yellow]")
    counts = report.counts()
    no_face, failed = counts["no_face"], counts["error"]
    without = f", {no_face} without a face" if no_face else ""
    console.print(f"{counts['ok']} scored{without}, {failed} failed"
                  + (f" -> {out}" if out else ""))
    if explain is not None:
        console.print(f"{report.heatmaps} heatmaps -> {escape(str(explain))}")


@app.command(
    epilog=_examples(
        "deepfake-detect serve --checkpoint runs/x1/model.safetensors",
        "deepfake-detect serve --checkpoint best.ckpt --port 9000 --token $(openssl rand -hex 16)",
        "DEEPFAKE_DETECT_TOKEN=s3cret deepfake-detect serve --checkpoint runs/ensemble.yaml --host 0.0.0.0",
        "deepfake-detect serve --checkpoint best.ckpt --cors-origin https://review.example.org --max-upload-mb 200 --timeout 120",
        "curl -F file=@photo.jpg -F aggregation=max http://127.0.0.1:8000/v1/predict",
    )
)
def serve(
    checkpoint: Checkpoints,
    config: ModelYaml = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on (default: loopback only; 0.0.0.0: every interface, then set "
        "a token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[str | None, typer.Option(
        help="Bearer token required on /v1 and /metrics (default: $DEEPFAKE_DETECT_TOKEN; "
        "neither: open).")] = None,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.001, help="Largest upload accepted, in MB (larger: HTTP 413).")] = 500.0,
    timeout: Annotated[float, typer.Option(
        min=0.001, help="Seconds one photo request or one video job may take (photo: HTTP "
        "504; video: the job fails).")] = 300.0,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="An origin whose pages may call the API from a browser (repeatable; default: "
        "none, CORS off).")] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(
        help="Face crops per forward pass (concurrent requests share batches).")] = 64,
) -> None:
    """Serve the model over HTTP: POST a photo or video to /v1/predict and get P(fake), the
    verdict at the checkpoint's threshold, per-face and per-frame scores and the model card.

    Scores equal predict's for the same file. Photos are answered at once (concurrent
    requests share the model's batches); videos become jobs to poll at /v1/jobs/<id>. A web
    page is at /, Prometheus metrics at /metrics, a health check at /healthz. Uploads are typed
    by their content, limited in size and kept in a private temporary folder only while
    analysed.
    """
    import uvicorn

    from deepfake_detect.serve import ServeSettings, create_app

    settings = ServeSettings(
        checkpoints=checkpoint, config=config, host=host, port=port, token=token,
        max_upload_mb=max_upload_mb, timeout_s=timeout, cors_origins=cors_origin or [],
        device=device, batch_size=batch_size,
    ).resolved()
    _options(batch_size, 0, device)  # a bad --batch-size or --device, before the model loads
    try:
        settings.check()
    except DeepfakeDetectError as exc:
        raise typer.BadParameter(str(exc)) from None
    api = create_app(settings)  # the model is loaded here, once
    if settings.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/yellow]: listening on {escape(host)} without a token: "
                      "anyone who reaches this port can use the model (set --token)")
    console.print(f"serving on http://{escape(host)}:{port} (Ctrl-C stops)")
    uvicorn.run(api, host=host, port=port)


@app.command(
    epilog=_examples(
        "deepfake-detect export --checkpoint runs/e1/checkpoints/best.ckpt --out effort_mine.safetensors",
        "deepfake-detect export -c configs/effort.yaml --checkpoint effort_clip_L14_trainOn_FaceForensic.pth --out effort_ff.safetensors",
        "deepfake-detect export --checkpoint runs/e1/model.safetensors --format onnx --out detector.onnx",
        "deepfake-detect export --checkpoint runs/e1/model.safetensors --out detector_fp16.onnx --fp16",
        "deepfake-detect predict faces/ --crops --checkpoint detector.onnx --out predictions.csv",
    )
)
def export(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option(help="The file to write: .safetensors, or .onnx with --format onnx.")],
    config: ModelYaml = None,
    threshold: Threshold = None,
    export_format: Annotated[str | None, typer.Option(
        "--format", metavar="safetensors|onnx",
        help="safetensors: a standalone checkpoint; onnx: an ONNX model (dynamic batch axis, "
        "preprocessing, face settings, threshold and temperature in its metadata) that "
        "predict, evaluate and serve run with ONNX Runtime. Default: from the --out suffix.")] = None,
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="With --format onnx: a float16 graph (for GPUs; float32 input and "
        "output), checked against PyTorch at a looser tolerance (1e-2 instead of 1e-4).")] = False,
    force: Force = False,
) -> None:
    """Write a standalone inference model: weights in their fastest form (Effort residuals and
    LoRA adapters merged into plain layers) plus the model config, preprocessing and threshold.

    With --format onnx the graph maps the preprocessed batch (B, 3, S, S) (a video detector:
    clips (B, T, 3, S, S)) to the logits and the fake logit; before the file is written,
    PyTorch and ONNX Runtime score the same random batch and the export is refused (nothing
    written) when P(fake) differs by more than 1e-4 (fp32).
    """
    from deepfake_detect.models.checkpoint import export_checkpoint

    result = export_checkpoint(checkpoint, out, config=config, threshold=threshold, force=force,
                               format=export_format, fp16=fp16)
    parity = ""
    if result.format == "onnx":
        parity = (f", ONNX {result.precision}, max |ΔP(fake)| vs PyTorch {result.max_diff:.2g} "
                  f"<= {result.tolerance:g}")
    console.print(f"wrote {result.path} ({result.size_mib:.1f} MiB, detector {result.detector!r}, "
                  f"threshold {result.threshold:.4g}{parity})")


ShardsDir = Annotated[Path | None, typer.Option(
    "--shards", metavar="DIR",
    help="Then also pack the finished output into litdata shards in DIR, as `deepfake-detect "
    "shard OUT --out DIR` would (DIR outside --out and the inputs). Not with --part: give it to "
    "prepare-merge.")]
ShardValFraction = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="With --shards: fraction held out for val where the data has no split "
    "(as shard --val-fraction; default 0.15).")]
ShardTestFraction = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="With --shards: fraction held out for test (as shard --test-fraction; "
    "default 0).")]
ShardSplitSeed = Annotated[int | None, typer.Option(
    min=0, help="With --shards: seed of the grouped split (as shard --split-seed; default 0).")]
ShardGroupDepth = Annotated[int | None, typer.Option(
    min=0, max=8, help="With --shards: folder levels under a label folder that name a group (as "
    "shard --group-depth; default: recognised).")]


def _shard_options(shards, workers, val_fraction, test_fraction, split_seed, group_depth):
    """``--shards DIR`` and its split options as the library's ShardOptions (None without it);
    a split option without --shards is a usage error, not silently ignored."""
    from deepfake_detect.data.shards import ShardOptions

    given = {"--val-fraction": val_fraction, "--test-fraction": test_fraction,
             "--split-seed": split_seed, "--group-depth": group_depth}
    if shards is None:
        stray = [flag for flag, value in given.items() if value is not None]
        if stray:
            raise typer.BadParameter("only applies with --shards DIR (the split of the shards); "
                                     "add --shards DIR or leave it out", param_hint=stray[0])
        return None
    options = {"out": shards, "workers": workers, "val_fraction": val_fraction,
               "test_fraction": test_fraction, "split_seed": split_seed, "group_depth": group_depth}
    return ShardOptions(**{k: v for k, v in options.items() if v is not None})


@app.command(
    epilog=_examples(
        "deepfake-detect prepare /data/videos --out /data/faces",
        "deepfake-detect prepare train/ val/ --out crops --frames 16 --crop align --workers 4",
        "deepfake-detect prepare dfdc_train_part_0/ --out dfdc_faces --select all --format jpg --quality 95",
        "deepfake-detect prepare clips/*.mp4 --label real --out real_faces",
        "deepfake-detect prepare dfdc/ --out dfdc_faces --device cuda --batch-size 128 --videos-at-once 8",
        "deepfake-detect prepare /nfs/dfdc/ --out /nfs/dfdc_faces --part 0/4",
        "deepfake-detect prepare ffpp/ --out ffpp_faces --shards ffpp_shards --test-fraction 0.1",
    )
)
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Videos, photos, folders (label/split folders, DFDC metadata.json) or CSV manifests.")],
    out: Annotated[Path, typer.Option(help="Output folder: crops, manifest.csv, prepare.json.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML with a prepare section (or an experiment config).")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per video, evenly spaced (default 32).")] = None,
    sampling: Annotated[str | None, typer.Option(help="even, every (every k-th frame) or all.")] = None,
    every: Annotated[int | None, typer.Option(help="k for --sampling every.")] = None,
    detector: Annotated[str | None, typer.Option(help="Face detector: retinaface (default, weights installed with the project), mtcnn, dlib.")] = None,
    detector_model: Annotated[Path | None, typer.Option(help="Model file for dlib (shape predictor) or retinaface (a Pytorch_Retinaface .pth; default: the packaged weights).")] = None,
    device: Annotated[str | None, typer.Option(help="Face detection device: auto, cpu, cuda.")] = None,
    detect_size: Annotated[int | None, typer.Option(help="Longest frame side used for detection (default 960).")] = None,
    fast_size: Annotated[int | None, typer.Option(help="Longest side of the fast first look (default 640); frames where it finds no face are searched again at --detect-size.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Frames per detection batch, filled from several videos (default 16; larger on a GPU).")] = None,
    min_face: Annotated[int | None, typer.Option(help="Smallest face side in pixels (default 20).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Minimum detector score (default 0.9).")] = None,
    select: Annotated[str | None, typer.Option(help="largest, all (tracked) or relative.")] = None,
    min_relative_size: Annotated[float | None, typer.Option(help="For --select relative (default 0.5).")] = None,
    crop: Annotated[str | None, typer.Option(help="box (square x margin) or align (5-point ArcFace).")] = None,
    margin: Annotated[float | None, typer.Option(help="Crop side / face side (default 1.3).")] = None,
    size: Annotated[int | None, typer.Option(help="Crop side in pixels (default 256).")] = None,
    image_format: Annotated[str | None, typer.Option("--format", help="png or jpg.")] = None,
    quality: Annotated[int | None, typer.Option(help="JPEG quality (default 95).")] = None,
    label: Annotated[str | None, typer.Option(help="Label for inputs outside label folders: real or fake.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (1: all work in this process).")] = 1,
    videos_at_once: Annotated[int, typer.Option(min=1, help="Videos each process decodes together, their frames sharing detection batches.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out that deepfake-detect did not make (never one holding the inputs).")] = False,
    part: Annotated[str | None, typer.Option("--part", metavar="I/N", help="Do only part I of N (0 <= I < N) of the work, e.g. on machine I of N sharing --out (same inputs, paths and settings on each); writes manifest.part-I-of-N.csv. Join the parts with `deepfake-detect prepare-merge OUT`.")] = None,
    shards: ShardsDir = None,
    val_fraction: ShardValFraction = None,
    test_fraction: ShardTestFraction = None,
    split_seed: ShardSplitSeed = None,
    group_depth: ShardGroupDepth = None,
) -> None:
    """Turn videos and photos into face crops plus a manifest.csv the training loader reads.

    Frames without a face are listed in the manifest with the reason; a rerun into the same
    --out skips finished videos and redoes unfinished ones. With --part I/N, N machines each
    do 1/N of the videos into the same --out; prepare-merge then writes manifest.csv. With
    --shards DIR the finished output is also packed into litdata shards (as `shard OUT --out DIR`).
    """
    from deepfake_detect.config.loading import read_yaml, validate
    from deepfake_detect.config.schema import PrepareConfig
    from deepfake_detect.data.labels import parse_label
    from deepfake_detect.data.prepare import parse_part
    from deepfake_detect.data.prepare import prepare as run_prepare
    from deepfake_detect.errors import DataError

    part_value = None
    if part is not None:
        try:
            part_value = parse_part(part)
        except DataError as exc:
            raise typer.BadParameter(str(exc).removeprefix(f"--part {part}: "), param_hint="--part") from None
    shard_options = _shard_options(shards, workers, val_fraction, test_fraction, split_seed, group_depth)
    base: dict = {}
    if config is not None:
        raw = read_yaml(config)
        base = raw.get("prepare", raw) if isinstance(raw, dict) else {}
    given = {
        "frames": {"count": frames, "sampling": sampling, "every": every},
        "detect": {
            "backend": detector, "model_path": detector_model, "device": device,
            "detect_size": detect_size, "fast_size": fast_size, "batch_size": batch_size,
            "min_face": min_face, "min_score": min_score,
        },
        "crop": {
            "select": select, "min_relative_size": min_relative_size, "mode": crop,
            "margin": margin, "size": size, "format": image_format, "quality": quality,
        },
    }
    for section, values in given.items():
        base.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    settings = validate(PrepareConfig, base, "prepare", str(config or ""))
    label_value = None
    if label is not None:
        label_value = parse_label(label)
        if label_value is None:
            raise typer.BadParameter(f"--label {label!r}: use real or fake")
    report = run_prepare(inputs, out, settings, label=label_value, workers=workers,
                         videos_at_once=videos_at_once, force=force, part=part_value,
                         shards=shard_options)
    _print_prepare(report, "prepare" if part_value is None else f"prepare part {part_value[0]}/{part_value[1]}")
    if part_value is not None:
        console.print(f"when all {part_value[1]} parts are done: deepfake-detect prepare-merge {escape(str(out))}")


def _print_prepare(report, title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in report.table():
        table.add_row(key, value)
    out_console.print(table)
    for path, reason in report.problems[:10]:
        console.print(f"[yellow]left out[/yellow] {escape(path)}: {escape(reason)}")
    for note in report.notes[:10]:
        console.print(f"[dim]{escape(note)}[/dim]")
    console.print(f"manifest: {report.manifest}")
    if report.shards is not None:
        _print_shards(report.shards)


@app.command(
    epilog=_examples(
        "deepfake-detect prepare-merge /nfs/dfdc_faces",
        "for i in 0 1 2 3; do deepfake-detect prepare dfdc/ --out faces --part $i/4; done && "
        "deepfake-detect prepare-merge faces",
        "deepfake-detect prepare-merge /nfs/dfdc_faces --shards /nfs/dfdc_shards --val-fraction 0.1",
    )
)
def prepare_merge(
    out: Annotated[Path, typer.Argument(help="The --out of the `prepare --part I/N` runs.")],
    shards: ShardsDir = None,
    workers: Annotated[int, typer.Option(min=1, help="With --shards: worker processes writing chunks.")] = 1,
    val_fraction: ShardValFraction = None,
    test_fraction: ShardTestFraction = None,
    split_seed: ShardSplitSeed = None,
    group_depth: ShardGroupDepth = None,
) -> None:
    """Join the parts of `prepare --part I/N` into manifest.csv and prepare.json.

    Checks that all N parts are there, complete, of the same N, inputs and settings (it names
    the missing ones and the command that makes them); the rows come in the order one whole
    `prepare` would write them. With --shards DIR the merged output is then packed into litdata
    shards (as `shard OUT --out DIR`).
    """
    from deepfake_detect.data.prepare import merge_parts

    options = _shard_options(shards, workers, val_fraction, test_fraction, split_seed, group_depth)
    _print_prepare(merge_parts(out, shards=options), "prepare-merge")


@app.command(
    epilog=_examples(
        "deepfake-detect shard /data/faces --out /data/faces-shards",
        "deepfake-detect shard ffpp/ celebdf/manifest.csv --out shards --workers 8 --test-fraction 0.1",
        "deepfake-detect train -c exp.yaml data.path=/data/faces-shards",
        "deepfake-detect shard /nfs/faces --out /nfs/faces-shards --node-rank 0 --num-nodes 4   "
        "# machine 0; --node-rank 1, 2, 3 on the others",
    )
)
def shard(
    inputs: Annotated[list[Path], typer.Argument(help="Dataset folders or CSV manifests (as data.path takes them).")],
    out: Annotated[Path, typer.Option(help="Output folder: <split>/ litdata chunks, <split>/samples.csv, shards.json.")],
    workers: Annotated[int, typer.Option(min=1, help="Worker processes writing chunks.")] = 1,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction held out for val where a dataset has no split (as data.val_fraction).")] = 0.15,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction held out for test (as data.test_fraction).")] = 0.0,
    split_seed: Annotated[int, typer.Option(min=0, help="Seed of the grouped split (as data.split_seed).")] = 0,
    group_depth: Annotated[int | None, typer.Option(min=0, max=8, help="Folder levels under a label folder that name a group (as data.group_depth; default: recognised).")] = None,
    node_rank: Annotated[int | None, typer.Option("--node-rank", metavar="R", help="With --num-nodes N: this machine is node R (0 <= R < N) of N machines sharing --out (same inputs, paths and options on each) and writes only its share. The last node to finish merges them into one dataset (or run `deepfake-detect shard-merge OUT`).")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", metavar="N", help="How many machines shard into --out together (with --node-rank).")] = None,
) -> None:
    """Pack datasets into litdata shards, one per split, for fast streaming training.

    Splits are made as training makes them (a video never straddles splits) and fixed in the
    shards; images are stored as their files' bytes. Unreadable images are skipped and counted.
    Train from them with data.path=OUT. With --node-rank R --num-nodes N, N machines each write
    1/N of the items; the result is the dataset one machine would write.
    """
    from deepfake_detect.data.shards import check_node, write_shards
    from deepfake_detect.errors import DataError

    node = None
    if (node_rank is None) != (num_nodes is None):
        raise typer.BadParameter("give --node-rank R and --num-nodes N together, e.g. --node-rank 0 "
                                 "--num-nodes 4", param_hint="--node-rank/--num-nodes")
    if node_rank is not None:
        try:
            node = check_node((node_rank, num_nodes))
        except DataError as exc:
            raise typer.BadParameter(str(exc), param_hint="--node-rank/--num-nodes") from None
    report = write_shards(inputs, out, workers=workers, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed,
                          group_depth=group_depth, node=node)
    _print_shards(report)


@app.command(
    epilog=_examples(
        "deepfake-detect shard-merge /nfs/faces-shards",
        "deepfake-detect shard-merge /nfs/faces-shards --num-nodes 4",
    )
)
def shard_merge(
    out: Annotated[Path, typer.Argument(help="The --out of the `shard --node-rank R --num-nodes N` runs.")],
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", metavar="N", min=1, help="Merge the node parts of this N (needed only when the folder holds parts of several N).")] = None,
) -> None:
    """Join the node parts of `shard --node-rank R --num-nodes N` into one shard dataset.

    The last node to finish does this itself; run it when that node could not (e.g. another
    was still running). Checks that all N nodes are there, finished, of the same inputs,
    options and samples (it names the missing ones and the command that makes them), then
    writes the splits and shards.json as one machine would have and removes the node parts.
    """
    from deepfake_detect.data.shards import merge_shard_nodes

    _print_shards(merge_shard_nodes(out, num_nodes))


def _print_shards(report) -> None:
    title = "shard"
    if report.node is not None:
        title = f"shard node {report.node[0]}/{report.node[1]} (its share)"
    elif report.merged_nodes:
        title = f"shard ({report.merged_nodes} nodes merged)"
    table = Table(title=title, show_header=False)
    for key, value in report.table():
        table.add_row(key, value)
    out_console.print(table)
    for path, reason in report.skipped[:10]:
        console.print(f"[yellow]skipped[/yellow] {escape(path)}: {escape(reason)}")
    for note in report.notes:
        console.print(f"[dim]{escape(note)}[/dim]")


@app.command(
    epilog=_examples(
        "deepfake-detect synthesize faces/manifest.csv --out sbi_data",
        "deepfake-detect synthesize crops/real --landmarks landmarks.json --out sbi_data --per-image 2",
    )
)
def synthesize(
    inputs: Annotated[list[Path], typer.Argument(help="Real face crops: folders, images or a prepare manifest.csv.")],
    out: Annotated[Path, typer.Option(help="Output dataset folder (real/, fake/, manifest.csv).")],
    landmarks: Annotated[Path | None, typer.Option(help="Landmarks JSON (name -> \\[\\[x, y], ...]) or a prepare manifest.")] = None,
    per_image: Annotated[int, typer.Option(help="Fakes made from each real crop.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same fakes).")] = 0,
    keep_real: Annotated[bool, typer.Option(help="Copy the reals into the output dataset.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (1: all work in this process).")] = 1,
    force: Force = False,
) -> None:
    """Make self-blended fakes (SBI) from real face crops, to train from real-only data."""
    from deepfake_detect.data.synthesize import synthesize as run_synthesize

    report = run_synthesize(
        list(inputs), out, landmarks=landmarks, per_image=per_image, seed=seed,
        workers=workers, keep_real=keep_real, force=force,
    )
    console.print(f"{report.made} fakes written, {len(report.skipped)} images skipped")
    for path, reason in report.skipped[:10]:
        console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(reason)}")
    console.print(f"manifest: {report.manifest}")


@app.command(epilog=_examples("deepfake-detect models"))
def models() -> None:
    """List the registered detectors (names usable as model.name)."""
    from deepfake_detect.models.registry import get_entry, list_detectors

    table = Table("name", "description")
    for name in list_detectors():
        table.add_row(name, get_entry(name).description)
    out_console.print(table)


@app.command(
    "config",
    epilog=_examples(
        "deepfake-detect config -c configs/xception.yaml",
        "deepfake-detect config -c configs/xception.yaml train.epochs=3",
        "deepfake-detect config --reference",
    ),
)
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Overrides key=value.")] = None,
    reference: Annotated[bool, typer.Option(help="Print the table of every config key.")] = False,
) -> None:
    """Validate a config and print it with every default filled in."""
    if reference:
        from deepfake_detect.models.reference import config_reference

        out_console.print(config_reference(), markup=False, highlight=False, soft_wrap=True)
        return
    if config is None:
        raise typer.BadParameter("give --config FILE or --reference")
    import yaml

    from deepfake_detect.config import load_config
    from deepfake_detect.models.registry import validate_model_config

    cfg = load_config(config, overrides or [])
    model = validate_model_config(cfg.model, source=str(config))
    resolved = cfg.model_copy(update={"model": model.model_dump(mode="json")})
    out_console.print(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), markup=False)


@app.command(
    "augment-preview",
    epilog=_examples(
        "deepfake-detect augment-preview -c configs/xception.yaml --out augment.png",
        "deepfake-detect augment-preview -c configs/xception.yaml --data /data/ff++ --samples 4 --views 6 data.augment.jpeg=0.5",
    ),
)
def augment_preview(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML (its data.augment is shown).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides key=value, e.g. data.augment.noise=1")] = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment-preview.png"),
    force: Force = False,
    data: Annotated[list[Path] | None, typer.Option(help="Dataset folder or CSV instead of data.path; repeatable.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Training images, one per row.")] = 8,
    views: Annotated[int, typer.Option(min=1, help="Augmented versions of each, beside the original.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the image choice and the augmentation draws.")] = 0,
) -> None:
    """Write a PNG grid of training images as the model sees them after augmentation.

    Each row is one training image: first resized only (as evaluation sees it), then --views
    independent draws of data.augment, de-normalised for display.
    """
    from deepfake_detect.config import load_config
    from deepfake_detect.training.preview import augment_preview as run_preview
    from deepfake_detect.outputs import claim_file

    cfg = load_config(config, overrides or [])
    claim_file(out, inputs=[config, *(data or cfg.data.path)], force=force)
    report = run_preview(cfg, out, samples=samples, views=views, seed=seed, data=data or None)
    width, height = report.size
    console.print(f"{len(report.images)} images x {report.views} views written to {report.path} ({width}x{height} px)")


@app.command(
    epilog=_examples(
        "deepfake-detect calibrate --checkpoint runs/x1/model.safetensors --data /data/ff++ --out runs/x1/calibrated.safetensors",
        "deepfake-detect calibrate --checkpoint best.ckpt --data val_a/ --data val_b.csv --split all --threshold-strategy fpr --target-fpr 0.01 --out cal.safetensors",
        "deepfake-detect calibrate -c configs/effort.yaml --checkpoint effort_clip_L14_trainOn_FaceForensic.pth --data ff_val/ --threshold-strategy keep --out effort_cal.safetensors",
        "deepfake-detect calibrate --checkpoint runs/b4/model.safetensors --checkpoint runs/swin/model.safetensors --data ff_val/ --out runs/ensemble.yaml",
    )
)
def calibrate(
    checkpoint: Checkpoints,
    data: Annotated[list[Path], typer.Option(help="Validation dataset folder or CSV manifest; repeatable (pooled).")],
    out: Annotated[Path, typer.Option(help="The calibrated .safetensors to write, or for an ensemble the .yaml ensemble file (calibration.json goes beside it).")],
    split: Annotated[str, typer.Option(help="auto (val split if present; all samples of a dataset without splits), val or all. Never test.")] = "auto",
    threshold_strategy: Annotated[
        str, typer.Option(help="eer, max_acc, max_f1, max_macro_f1, fpr (lowest threshold with FPR <= --target-fpr) or keep (same decisions as before).")
    ] = "eer",
    target_fpr: Annotated[float, typer.Option(help="Target false-positive rate for --threshold-strategy fpr.")] = 0.01,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
    config: ModelYaml = None,
    ensemble: EnsembleMethod = None,
    weights: Weights = None,
    force: Force = False,
) -> None:
    """Fit temperature scaling and a decision threshold on validation data; write a new checkpoint.

    The temperature T (P(fake) = sigmoid(fake logit / T)) minimises the validation NLL; it keeps
    the ranking (AUC, EER) and makes the scores honest probabilities. predict and evaluate apply
    the stored temperature and threshold automatically. The test split is refused: calibrating
    on it would leak.

    With several --checkpoint options (or an ensemble file) the ensemble's weights are fitted
    (soft, logits; unless --weights are given) together with its threshold, and written as an
    ensemble .yaml that predict and evaluate take as --checkpoint.
    """
    from deepfake_detect.calibration.calibrate import calibrate as run_calibrate
    from deepfake_detect.calibration.temperature import CalibrateRequest

    request = CalibrateRequest(
        model=_model_source(checkpoint, config, ensemble, weights), data=data, out=out,
        split=split, threshold_strategy=threshold_strategy, target_fpr=target_fpr, force=force,
        options=_options(batch_size, workers, device),
    )
    result = run_calibrate(_checked(request))
    title = result.title
    table = Table("", "before", "after", title=f"{title} on {result.n} samples "
                  f"({result.n_real} real / {result.n_fake} fake)")
    for row in result.table():
        table.add_row(*row)
    out_console.print(table)
    for note in result.notes:
        console.print(f"[yellow]warning[/yellow]: {escape(note)}")
    console.print(f"wrote {out} (threshold strategy {result.threshold_strategy}) and "
                  f"{Path(out).parent / 'calibration.json'}")


def _checked(request):
    """``request`` after its own check; options that do not fit together are usage errors
    (shown with a pointer to the command's help)."""
    from deepfake_detect.errors import ConfigError

    try:
        request.check()
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return request


def _model_source(checkpoints, config, method, weights):
    from deepfake_detect.inference.ensemble import ModelSource

    return ModelSource(checkpoints, config, method, weights)


def _options(batch_size, workers, device, tta=None, mc_dropout=0):
    from deepfake_detect.inference.options import ScoringOptions

    return ScoringOptions(batch_size=batch_size, num_workers=workers, device=device, tta=tta,
                          mc_dropout=mc_dropout)


def _print_metrics(results: dict) -> None:
    from deepfake_detect.evaluation.evaluate import summary_rows

    for name, metrics in results.items():
        table = Table(title=f"{name}", show_header=False)
        for key, value in summary_rows(metrics):
            table.add_row(key, value)
        out_console.print(table)


def _print_benchmark(result) -> None:
    """benchmark's tables: frame and video AUC per checkpoint and dataset, then the paired
    differences."""
    from deepfake_detect.evaluation.benchmark import cell_text, difference_text

    names = list(dict.fromkeys(c for c, _ in result.cells))
    datasets = list(dict.fromkeys(d for _, d in result.cells))
    for level in ("frame", "video"):
        table = Table(title=f"{level} AUC [95% interval]")
        table.add_column("checkpoint")
        for d in datasets:
            table.add_column(escape(d), justify="right")
        for c in names:
            table.add_row(escape(c), *(cell_text(result.cells[(c, d)], level, "auc") for d in datasets))
        out_console.print(table)
    if result.comparisons:
        table = Table(title="paired AUC difference A - B (same samples)")
        for column in ("dataset", "level", "A", "B", "A - B [95% interval]", "p (DeLong)"):
            table.add_column(column)
        for c in result.comparisons:
            table.add_row(escape(c["dataset"]), c["level"], escape(c["a"]), escape(c["b"]),
                          difference_text(c),
                          "n/a" if c.get("delong_p") is None else f"{c['delong_p']:.3g}")
        out_console.print(table)


def _print_evaluation(results: dict) -> None:
    """evaluate's tables: each dataset's key figures, then its per-group table if any."""
    from deepfake_detect.evaluation.evaluate import group_rows, summary_rows

    for name, metrics in results.items():
        table = Table(title=f"{name}", show_header=False)
        for key, value in summary_rows(metrics, groups=False):
            table.add_row(key, value)
        out_console.print(table)
        rows = group_rows(metrics)
        if not rows:
            continue
        per_group = Table(title=f"{name}: per group (its fakes vs all reals), AUC [95% interval]")
        for column in ("group", "fakes", "frame AUC", "video AUC"):
            per_group.add_column(column, justify="left" if column == "group" else "right")
        for row in rows:
            per_group.add_row(*(escape(cell) for cell in row))
        out_console.print(per_group)


def _one_line(text: str) -> str:
    """Messages reach the console as one line (multi-line details are joined with '; ')."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    if rest and head.endswith(":"):
        return f"{head} {'; '.join(rest)}"
    return "; ".join(lines)


def _describe_os_error(exc: OSError) -> str:
    """`cannot write /x: Permission denied`-style text naming the file the system refused."""
    where = exc.filename if exc.filename is not None else ""
    if not where and exc.errno is not None:
        where = "writing the output"  # e.g. standard output on a full disk
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or type(exc).__name__
    if where:
        return f"{where}: {reason} (check that the path exists, is of the right kind and is writable)"
    return f"{reason}: {exc}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure reaches the user as one line and a non-zero exit code, never
    a traceback (set DEEPFAKE_DETECT_DEBUG=1 to see one for an unexpected error)."""
    import os

    from typer.exceptions import TyperException  # typer's (vendored) click errors

    debug = bool(os.environ.get("DEEPFAKE_DETECT_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except TyperException as exc:  # usage errors: bad or missing options and arguments
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            out_console.print(ctx.get_help())
            sys.exit(0)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(f"{exc.format_message()}{hint}", getattr(exc, "exit_code", 2))
    except DeepfakeDetectError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        if debug:
            raise
        _fail(_describe_os_error(exc), 1)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (this is a bug of deepfake-detect; "
              "rerun with DEEPFAKE_DETECT_DEBUG=1 for the details and report them)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(_one_line(message))}", highlight=False,
                  soft_wrap=True)
    sys.exit(code)
