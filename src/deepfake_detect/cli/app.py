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
    context_settings={"help_option_names": ["-h", "--help"]},
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


Checkpoint = Annotated[Path, typer.Option(help="A .ckpt or .safetensors written by train.")]
Threshold = Annotated[
    float | None, typer.Option(help="Decision threshold (default: the checkpoint's).")
]
BatchSize = Annotated[int, typer.Option(help="Images per batch.")]
Workers = Annotated[int | None, typer.Option(help="Data loading workers (default: CPU count, max 8).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")]


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
    from deepfake_detect.quickstart import run_quickstart

    run_quickstart(out, seed=seed)


@app.command(
    epilog=_examples(
        "deepfake-detect train -c configs/mobilenetv2.yaml data.path=/data/ff++",
        "deepfake-detect train -c configs/xception.yaml --out runs/x1 train.epochs=3 data.batch_size=16",
        "deepfake-detect train -c configs/xception.yaml --out runs/x1 --resume",
    )
)
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML (see configs/).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides key=value, e.g. train.epochs=3")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default <output_dir>/<name>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Fine-tune a detector. Writes config, logs, checkpoints, metrics and plots to one run folder."""
    from deepfake_detect.config import load_config
    from deepfake_detect.training.runner import train as run_train

    cfg = load_config(config, overrides or [])
    result = run_train(cfg, out=out, resume=resume)
    if result.best_checkpoint is None:
        return
    console.print(f"[green]best checkpoint[/green] {result.best_checkpoint} ({cfg.train.monitor} = {result.best_score:.4f})")
    if result.test_metrics:
        _print_metrics({"test": result.test_metrics})
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} files skipped[/yellow] (listed in {result.run_dir / 'report.json'})")
    console.print(f"run folder: {result.run_dir}")


@app.command(
    epilog=_examples(
        "deepfake-detect evaluate --checkpoint runs/x1/checkpoints/best.ckpt --data /data/celeb-df",
        "deepfake-detect evaluate --checkpoint runs/x1/model.safetensors --data a/ --data b.csv --split all",
    )
)
def evaluate(
    checkpoint: Checkpoint,
    data: Annotated[list[Path], typer.Option(help="Dataset folder or CSV manifest; repeatable.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/evaluate-<time>).")] = None,
    split: Annotated[str, typer.Option(help="auto (test split if present, else all), test, val, train, all.")] = "auto",
    threshold: Threshold = None,
    video_aggregation: Annotated[str | None, typer.Option(help="mean, max or median of frame scores.")] = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
    plots: Annotated[bool, typer.Option(help="Write ROC, PR, confusion and histogram PNGs.")] = True,
) -> None:
    """Frame- and video-level AUC, EER, AP, ACC, F1 per dataset; predictions.csv and plots."""
    from deepfake_detect.evaluation.runner import evaluate_checkpoint
    from deepfake_detect.runinfo import create_run_dir

    out_dir = out or create_run_dir("runs", "evaluate")
    results = evaluate_checkpoint(
        checkpoint, data, out_dir, split=split, threshold=threshold,
        video_aggregation=video_aggregation, batch_size=batch_size, num_workers=workers,
        device=device, plots=plots,
    )
    _print_metrics(results)
    console.print(f"results: {out_dir}")


@app.command(
    epilog=_examples(
        "deepfake-detect predict --checkpoint runs/x1/model.safetensors faces/ --out preds.csv",
        "deepfake-detect predict --checkpoint best.ckpt a.jpg b.png --json preds.json",
    )
)
def predict(
    checkpoint: Checkpoint,
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of face crops.")],
    out: Annotated[Path | None, typer.Option(help="CSV file (filename,label,score,error).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    threshold: Threshold = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    device: Device = "auto",
) -> None:
    """Score images: label 1 = fake at the checkpoint's threshold, score = P(fake)."""
    from deepfake_detect.inference.predict import predict_files, write_predictions
    from deepfake_detect.models.checkpoint import load_checkpoint

    detector = load_checkpoint(checkpoint)
    rows = predict_files(
        detector, inputs, threshold=detector.threshold if threshold is None else threshold,
        batch_size=batch_size, num_workers=workers, device=device,
    )
    if out is None and json_out is None:
        write_predictions(rows, sys.stdout)
    else:
        write_predictions(rows, out, json_out)
    failed = sum(1 for r in rows if r.error)
    console.print(f"{len(rows) - failed} scored, {failed} failed" + (f" -> {out}" if out else ""))


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


def _print_metrics(results: dict) -> None:
    from deepfake_detect.evaluation.runner import summary_rows

    for name, metrics in results.items():
        table = Table(title=f"{name}", show_header=False)
        for key, value in summary_rows(metrics):
            table.add_row(key, value)
        out_console.print(table)


def main() -> None:
    try:
        app()
    except DeepfakeDetectError as exc:
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
