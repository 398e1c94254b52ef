"""The pipeline's human-readable report: `report.md` with PNG plots and the clips to listen to."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq

from raymlc.data import LabelVocabulary
from raymlc.metrics import SUMMARY_KEYS
from raymlc.teacher_student import MODELS


def _bar_chart(path: Path, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(labels)), 3.6))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        axes.bar(x + i * width, np.nan_to_num(np.asarray(values, float)), width, label=name)
    axes.set_xticks(x + width * (len(series) - 1) / 2, labels, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_report(output: Path, metrics: dict, vocabulary: LabelVocabulary, top: int) -> Path:
    """Write `output/report.md` (+ `ap_per_class.png`, `flag_precision.png`); returns its path."""
    labels = list(vocabulary.names)
    lines = ["# raymlc pipeline report", "", "## Test metrics (clean test labels)", ""]
    lines += ["| model | " + " | ".join(SUMMARY_KEYS) + " |", "|---" * (len(SUMMARY_KEYS) + 1) + "|"]
    for name in MODELS:
        if metrics.get(name):
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics[name][k]) for k in SUMMARY_KEYS) + " |")
    flags = metrics["flags"]
    lines += [
        "",
        f"Flags: {flags['count']} flagged; precision {_fmt(flags['precision'])}, recall {_fmt(flags['recall'])}"
        " against the labels the manifest records as removed.",
        f"Gap recovered (student − teacher)/(oracle − teacher), mAP: {_fmt(metrics.get('gap_recovered'))}; "
        f"gain fraction (student − teacher)/(perfect mask − teacher): {_fmt(metrics.get('gain_fraction'))}.",
        "",
        "![per-class AP](ap_per_class.png)",
    ]
    per_class = metrics["per_class_ap"]
    _bar_chart(
        output / "ap_per_class.png",
        labels,
        {name: per_class[name] for name in ("teacher", "student", "oracle") if name in per_class},
        "average precision",
        "Per-class test AP",
    )
    if metrics.get("flag_precision_per_class") is not None:
        _bar_chart(
            output / "flag_precision.png",
            labels,
            {"flag precision": metrics["flag_precision_per_class"]},
            "precision",
            "Flags that are truly missing labels, per class",
        )
        lines += ["", "![flag precision per class](flag_precision.png)"]
    top_flags = output / "flag_top.parquet"
    if top_flags.exists() and top:
        lines += ["", "## Top flagged clips per class (listen to these)", ""]
        lines += ["| label | rank | clip | score | removed | audio |", "|---|---|---|---|---|---|"]
        for row in pq.read_table(top_flags).to_pylist():
            segment = "" if row["start_s"] is None else f" [{row['start_s']:.1f}–{row['end_s']:.1f} s]"
            lines.append(
                f"| {row['label']} | {row['rank']} | {row['clip_id']} | {row['score']:.3f} | "
                f"{'yes' if row['removed'] else 'no'} | {row['audio'] or ''}{segment} |"
            )
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
