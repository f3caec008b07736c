"""Names accepted for class labels and splits, in folder names and CSV manifests (any case)."""

from __future__ import annotations

from deepfake_detect.data.samples import CLASS_NAMES, FAKE, REAL

REAL_NAMES = frozenset(
    {"real", "original", "originals", "pristine", "genuine", "authentic", "bonafide", "live", "0"}
)
FAKE_NAMES = frozenset(
    {
        "fake", "fakes", "manipulated", "deepfake", "deepfakes", "forged", "forgery",
        "synthetic", "spoof", "attack", "1",
    }
)

# synonym -> canonical split name
SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")


def _norm(name: object) -> str:
    return str(name).strip().lower()


def parse_label(name: object) -> int | None:
    """0 (real), 1 (fake) or None when ``name`` is no known label name."""
    key = _norm(name)
    if key in REAL_NAMES:
        return REAL
    if key in FAKE_NAMES:
        return FAKE
    # CSV cells such as "1.0" written by pandas
    if key in {"0.0", "1.0"}:
        return int(float(key))
    return None


def parse_split(name: object) -> str | None:
    """Canonical split ("train", "val", "test") or None when ``name`` is no known split name."""
    return SPLIT_NAMES.get(_norm(name))


def label_name(label: int) -> str:
    return CLASS_NAMES[label]


def accepted_names() -> str:
    """The accepted label and split names, for error messages."""
    real = ", ".join(sorted(n for n in REAL_NAMES if not n.isdigit()))
    fake = ", ".join(sorted(n for n in FAKE_NAMES if not n.isdigit()))
    split = ", ".join(f"{k} ({v})" if k != v else k for k, v in SPLIT_NAMES.items())
    return f"real labels: {real}; fake labels: {fake}; splits: {split}"
