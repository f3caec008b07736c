"""Error analysis: the detector's most confident mistakes as a CSV and a contact sheet.

A false positive is a real sample the detector calls fake (score above the threshold, the strict
'>' of :func:`~deepfake_detect.evaluation.metrics.predict_labels`); a false negative a fake it
calls real (score at or below the threshold). The most confident ones are the reals with the
highest and the fakes with the lowest P(fake): the cases worth looking at first.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deepfake_detect.data.images import load_rgb
from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.metrics import check_inputs, check_threshold, predict_labels

log = logging.getLogger(__name__)

THUMB = 128  # thumbnail side in pixels
CAPTION = 34  # caption band under each thumbnail
HEADER = 30  # section heading band
COLUMNS = 8
PAD = 6
_BACKGROUND, _TILE, _TEXT = (255, 255, 255), (150, 150, 150), (20, 20, 20)


@dataclass(frozen=True)
class ErrorCase:
    kind: str  # "false_positive" | "false_negative"
    path: str
    video: str
    label: int
    score: float
    # reads the image (None: the file at ``path``); a shard sample reads it from its chunk
    read: Callable[[], Any] | None = field(default=None, repr=False, compare=False)


@dataclass
class ErrorReport:
    """All false positives / negatives at the threshold (counts) and the top ones (cases)."""

    false_positives: int
    false_negatives: int
    cases: list[ErrorCase] = field(default_factory=list)
    csv_path: Path | None = None
    png_path: Path | None = None

    def counts(self) -> dict[str, int]:
        return {"false_positives": self.false_positives, "false_negatives": self.false_negatives}


def error_counts(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """``{"false_positives": k, "false_negatives": m}`` at ``threshold``."""
    y, s = check_inputs(labels, scores)
    pred = predict_labels(s, check_threshold(threshold))
    return {"false_positives": int(np.sum((y == 0) & (pred == 1))),
            "false_negatives": int(np.sum((y == 1) & (pred == 0)))}


def top_errors(
    labels: Any, scores: Any, threshold: float, n: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` most confident false positives (score descending) and false
    negatives (score ascending); ties keep the input order."""
    if n < 0:
        raise DataError(f"n (number of error examples) must be 0 or more, got {n}")
    y, s = check_inputs(labels, scores)
    pred = predict_labels(s, check_threshold(threshold))
    fp = np.flatnonzero((y == 0) & (pred == 1))
    fn = np.flatnonzero((y == 1) & (pred == 0))
    fp = fp[np.argsort(-s[fp], kind="stable")][:n]
    fn = fn[np.argsort(s[fn], kind="stable")][:n]
    return fp, fn


def error_analysis(
    samples_paths: Sequence[str | Path],
    labels: Any,
    scores: Any,
    threshold: float,
    out_dir: str | Path,
    n: int = 16,
    videos: Sequence[str] | None = None,
    readers: Sequence[Callable[[], Any] | None] | None = None,
) -> ErrorReport:
    """Write ``errors.csv`` (kind,path,video,label,score) and the contact sheet ``errors.png``
    (false positives, then false negatives) of the ``n`` most confident errors into ``out_dir``.

    ``videos`` are the video ids of the samples (default: empty); ``readers`` read each sample's
    image where it is not a file at its path (shard samples; None: the file). Images that
    cannot be read become grey 'unreadable' tiles. Returns the counts of all errors and the cases written.
    """
    paths = [str(p) for p in samples_paths]
    y, s = check_inputs(labels, scores)
    if len(paths) != y.size:
        raise DataError(f"samples_paths and scores differ in length: {len(paths)} vs {y.size}")
    vids = [str(v) for v in videos] if videos is not None else [""] * y.size
    if len(vids) != y.size:
        raise DataError(f"videos and scores differ in length: {len(vids)} vs {y.size}")
    counts = error_counts(y, s, threshold)
    fp, fn = top_errors(y, s, threshold, n)
    reads = list(readers) if readers is not None else [None] * y.size
    cases = [ErrorCase(kind, paths[i], vids[i], int(y[i]), float(s[i]), reads[i])
             for kind, idx in (("false_positive", fp), ("false_negative", fn)) for i in idx]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "errors.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "path", "video", "label", "score"])
        for c in cases:
            writer.writerow([c.kind, c.path, c.video, c.label, f"{c.score:.6f}"])
    sections = [
        (f"False positives (real called fake): {len(fp)} most confident of {counts['false_positives']}",
         [c for c in cases if c.kind == "false_positive"]),
        (f"False negatives (fake called real): {len(fn)} most confident of {counts['false_negatives']}",
         [c for c in cases if c.kind == "false_negative"]),
    ]
    png_path = contact_sheet(sections, out / "errors.png")
    return ErrorReport(counts["false_positives"], counts["false_negatives"], cases, csv_path,
                       png_path)


def _thumbnail(case: ErrorCase) -> Image.Image | None:
    """The case's image fitted into THUMB x THUMB, or None when it cannot be read."""
    try:
        im = case.read() if case.read is not None else load_rgb(case.path)
        im.thumbnail((THUMB, THUMB))
        return im
    except Exception as exc:  # any unreadable input is a tile, never a failed evaluation
        log.warning("error analysis: cannot read %s (%s)", case.path, exc)
        return None


def _label(case: ErrorCase, limit: int = 22) -> str:
    name = case.video or Path(case.path).stem
    if len(name) > limit:
        name = "..." + name[-(limit - 3):]
    return f"P(fake) {case.score:.3f}\n{name}"


def contact_sheet(sections: Sequence[tuple[str, Sequence[ErrorCase]]], path: Path) -> Path:
    """A grid of thumbnails with score captions, one headed block per section."""
    font = ImageFont.load_default(size=11)
    head_font = ImageFont.load_default(size=15)
    cell_w, cell_h = THUMB + PAD, THUMB + CAPTION + PAD
    width = PAD + COLUMNS * cell_w
    rows = [max(1, -(-len(cases) // COLUMNS)) for _, cases in sections]
    height = PAD + sum(HEADER + r * cell_h for r in rows)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y0 = PAD
    for (heading, cases), n_rows in zip(sections, rows):
        draw.text((PAD, y0 + 6), heading, fill=_TEXT, font=head_font)
        y0 += HEADER
        if not cases:
            draw.text((PAD, y0 + THUMB // 2), "none", fill=(120, 120, 120), font=head_font)
        for k, case in enumerate(cases):
            x = PAD + (k % COLUMNS) * cell_w
            y = y0 + (k // COLUMNS) * cell_h
            thumb = _thumbnail(case)
            if thumb is None:
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), fill=_TILE)
                draw.text((x + THUMB // 2, y + THUMB // 2), "unreadable", fill=(255, 255, 255),
                          font=font, anchor="mm")
            else:
                sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            draw.multiline_text((x, y + THUMB + 2), _label(case), fill=_TEXT, font=font,
                                spacing=2)
        y0 += n_rows * cell_h
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


__all__ = ["ErrorCase", "ErrorReport", "contact_sheet", "error_analysis", "error_counts",
           "top_errors"]
