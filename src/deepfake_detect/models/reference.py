"""README's model zoo table and config reference, generated from the detector registry.

Each detector contributes what it registered (``register_detector``): its config class (whose
docstring and keys make its part of the config reference), its defaults and its
``DetectorCard`` (its zoo row). Nothing here names a family, so a new detector, built-in or a
plugin, appears without edits to this module.
"""

from __future__ import annotations

import inspect

from deepfake_detect.config.reference import iter_keys, markdown_table
from deepfake_detect.config.schema import EnsembleConfig, EnsembleMember, ExperimentConfig
from deepfake_detect.models.detector import ModelConfig
from deepfake_detect.models.registry import (
    DetectorEntry,
    builtin_detectors,
    get_entry,
    list_detectors,
)


def _detector_names(builtin_only: bool) -> list[str]:
    """Built-in detectors in their zoo order, then any others (plugins, user code) sorted."""
    builtin = builtin_detectors()
    if builtin_only:
        return builtin
    return builtin + [n for n in list_detectors() if n not in builtin]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_table(builtin_only: bool = False) -> str:
    """The README "Model zoo" table: one row per detector, from its registered card."""
    rows = [
        "| name | architecture | input | normalisation | pretrained weights |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in _detector_names(builtin_only):
        entry = get_entry(name)
        card = entry.card
        cells = (
            [card.architecture, card.input, card.normalisation, card.weights]
            if card is not None
            else [entry.description, "", "", ""]
        )
        rows.append(f"| `{name}` | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _doc(cls: type) -> str:
    # Only the class's own docstring: pydantic and Python would otherwise show a parent's.
    own = cls.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(own).split()) if own else ""


def _defaults_text(entries: list[DetectorEntry]) -> str:
    parts = []
    for entry in entries:
        if entry.defaults:
            values = ", ".join(f"`{k}` {v!r}" for k, v in entry.defaults.items())
            parts.append(f"`{entry.name}` defaults to {values}." if len(entries) > 1
                         else f"Defaults: {values}.")
    return " ".join(parts)


def _model_sections(names: list[str]) -> list[str]:
    groups: dict[type[ModelConfig], list[DetectorEntry]] = {}
    for name in names:
        entry = get_entry(name)
        groups.setdefault(entry.config_cls, []).append(entry)

    parts = [
        "#### `model`: keys of every detector",
        markdown_table(ModelConfig, "model."),
    ]
    # Each config class lists the keys it adds to (or changes in) the nearest class shown above.
    shown: dict[type[ModelConfig], str] = {ModelConfig: "every detector"}
    for cls, entries in groups.items():
        base = next(b for b in cls.__mro__ if b in shown)
        base_rows = set(iter_keys(base, "model."))
        skip = tuple(row[0] for row in iter_keys(cls, "model.") if row in base_rows)
        listed = ", ".join(f"`{e.name}`" for e in entries)
        parts.append(f"#### `model` for {listed}")
        extra = len(skip) < len(list(iter_keys(cls, "model.")))
        intro = f"The keys of {shown[base]}" + (
            ", with these added or changed:" if extra else ", and no others.")
        parts.append(" ".join(t for t in (_doc(cls), _defaults_text(entries), intro) if t))
        if extra:
            parts.append(markdown_table(cls, "model.", skip=skip))
        shown[cls] = f"`{entries[0].name}`"
    return parts


def config_reference(builtin_only: bool = False) -> str:
    """The config reference: experiment keys, each detector's ``model`` keys, ensemble files.

    ``builtin_only`` leaves out detectors from plugins and user code (README shows only the
    built-in ones; ``deepfake-detect config --reference`` shows every registered detector).
    """
    parts = [
        "#### Experiment (`name`, `seed`, `data`, `train`, `strategy`, `eval`, `log`, `prepare`)",
        markdown_table(ExperimentConfig, skip=("model",)),
        *_model_sections(_detector_names(builtin_only)),
        (
            "#### Ensemble file (`--checkpoint ensemble.yaml`; written by `calibrate` with "
            "several checkpoints)"
        ),
        markdown_table(EnsembleConfig, "ensemble."),
        markdown_table(EnsembleMember, "ensemble.members[]."),
    ]
    return "\n\n".join(parts) + "\n"
