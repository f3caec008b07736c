"""Markdown reference of config keys, generated from the pydantic schema (README 'Config reference')."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: typing.Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "null")
    for prefix in ("<class '", "'>"):
        text = text.replace(prefix, "")
    text = re.sub(r"Annotated\[(\w+), FieldInfo\(.*?\]\)\]", r"\1", text)
    text = re.sub(r"\b(?:[a-z_]\w*\.)+(?=[A-Z])", "", text)  # module paths of classes
    return text.replace("Literal", "one of ")


def _submodel(annotation: typing.Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def iter_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every leaf key of ``model``."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from iter_keys(sub, key + ".")
            continue
        if isinstance(field.default, Path):
            default = repr(str(field.default))
        elif field.default is not PydanticUndefined:
            default = repr(field.default)
        elif field.default_factory is not None:
            default = repr(field.default_factory())
        else:
            default = "required"
        yield key, _type_name(field.annotation), default, field.description or ""


def markdown_table(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, doc in iter_keys(model, prefix):
        if key in skip:
            continue
        kind = kind.replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{default}` | {doc} |")
    return "\n".join(rows)
