"""Reviewing proposed labels (pure: no Ray, no web framework): the review queue, durable decision logs, how the
decisions of several reviewers combine, and applying them to a manifest.

* The **queue** has one schema (`QUEUE_SCHEMA`) for a relabel run's proposals (`review_queue.parquet`) and a
  pipeline run's flags (`flag_top.parquet`, which adds `removed`): per class the most confident items, each a
  (clip, label) with the clip's audio segment, score (probability), margin (logit − threshold; none for flags)
  and the clip's current labels.
* **Decisions** (`present`, `absent`, `unsure`) are appended as they are made to one JSON-lines file per
  reviewer (`decisions-<reviewer>.jsonl`), a whole line per `os.write` on a file opened for appending, then
  fsync'd: a decision acknowledged is on disk, and a line torn by a crash is ignored when read back.
* **Combining**: a reviewer's last decision on a (clip, label) replaces their earlier ones; reviewers who say
  `unsure` abstain; when the others agree their decision holds, and when they disagree the entry is a
  `conflict` and left as it was.
* **Applying**: a new manifest in which accepted (`present`) labels join `labels` and rejected (`absent`) ones
  join `explicit_negatives` — the one kind of label the flagger never flags — with a `review` column recording
  every reviewed entry of the clip. The input is never modified.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymlc.data import LabelVocabulary, normalize_manifest, read_manifest
from raymlc.data.files import exists, resolve
from raymlc.flagging import FlagResult

QUEUE_FILES = ("review_queue.parquet", "flag_top.parquet")  # a relabel run's, a pipeline run's
QUEUE_SCHEMA = pa.schema(
    [
        ("label", pa.string()),
        ("rank", pa.int64()),
        ("clip_id", pa.string()),
        ("audio", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("score", pa.float64()),
        ("margin", pa.float64()),
        ("labels", pa.list_(pa.string())),
        ("row_index", pa.int64()),
    ]
)
DECISIONS = ("present", "absent", "unsure")
OUTCOMES = ("accepted", "rejected", "unsure", "conflict", "contradicted")  # what applying does to an entry
REVIEW_TYPE = pa.list_(
    pa.struct([("label", pa.string()), ("decision", pa.string()), ("reviewers", pa.list_(pa.string()))])
)
_REVIEWER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class ReviewError(ValueError):
    """A queue, decision or reviewer name that cannot be used, with what is wrong."""


def queue_from_flags(result: FlagResult, train_rows: pa.Table, vocabulary: LabelVocabulary, top: int) -> pa.Table:
    """A pipeline run's queue (`flag_top.parquet`): the `top` best-scored flags of each class with the clip's
    audio, segment and labels, and whether the flag is a removed label (`removed`, the truth where recorded)."""
    records = []
    for c, label in enumerate(vocabulary.names):
        for rank, (row, score) in enumerate(zip(result.class_rows(c)[:top], result.class_scores(c)[:top], strict=True)):
            clip = train_rows.slice(int(row), 1).to_pylist()[0]
            records.append(
                {key: clip.get(key) for key in ("clip_id", "audio", "start_s", "end_s")}
                | {"label": label, "rank": rank + 1, "score": float(score), "margin": None, "labels": clip["labels"]}
                | {"row_index": int(row), "removed": label in (clip.get("removed_labels") or [])}
            )
    return pa.Table.from_pylist(records, schema=QUEUE_SCHEMA.append(pa.field("removed", pa.bool_())))


def read_queue(run_dir: str) -> pa.Table:
    """The queue of a relabel or pipeline run directory, in `QUEUE_SCHEMA` (plus any extra columns)."""
    for name in QUEUE_FILES:
        path = f"{run_dir.rstrip('/')}/{name}"
        if exists(path):
            filesystem, inner = resolve(path)
            table = pq.read_table(inner, filesystem=filesystem)
            missing = [field.name for field in QUEUE_SCHEMA if field.name not in table.column_names]
            if missing:
                raise ReviewError(f"{path}: not a review queue (missing columns {missing})")
            return table
    raise ReviewError(f"{run_dir}: no review queue ({' or '.join(QUEUE_FILES)}): run `raymlc relabel` or a pipeline")


def check_reviewer(name: str) -> str:
    """A reviewer name usable in a file name: 1-64 letters, digits or `_ . @ -`."""
    if not _REVIEWER.fullmatch(name or ""):
        raise ReviewError(f"reviewer name {name!r}: use 1-64 letters, digits or _ . @ -")
    return name


@dataclass(frozen=True)
class Decision:
    """One reviewer's answer about one (clip, label), when it was given."""

    clip_id: str
    label: str
    decision: str
    reviewer: str
    decided_at: str

    @classmethod
    def now(cls, clip_id: str, label: str, decision: str, reviewer: str) -> Decision:
        if decision not in DECISIONS:
            raise ReviewError(f"decision {decision!r}: use one of {', '.join(DECISIONS)}")
        return cls(clip_id, label, decision, check_reviewer(reviewer), datetime.now(UTC).isoformat())


class DecisionLog:
    """The decisions of a review, one append-only JSON-lines file per reviewer in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def path(self, reviewer: str) -> Path:
        return self.directory / f"decisions-{check_reviewer(reviewer)}.jsonl"

    def append(self, decision: Decision) -> None:
        """Write one decision durably: a whole line in one append, fsync'd before returning."""
        line = (json.dumps(asdict(decision), ensure_ascii=False) + "\n").encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            handle = os.open(self.path(decision.reviewer), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(handle, line)
                os.fsync(handle)
            finally:
                os.close(handle)

    def read(self) -> list[Decision]:
        """Every complete decision of every reviewer, each reviewer's in the order given."""
        decisions = []
        for path in sorted(self.directory.glob("decisions-*.jsonl")):
            for line in path.read_bytes().split(b"\n"):
                try:
                    decisions.append(Decision(**json.loads(line)))
                except (ValueError, TypeError):  # the empty tail after the last newline, or a line torn by a crash
                    continue
        return decisions


def latest(decisions: Iterable[Decision], reviewer: str | None = None) -> dict[tuple[str, str], Decision]:
    """The last decision per (clip, label) of `reviewer`, or per (clip, label, reviewer) of everyone."""
    last: dict = {}
    for decision in decisions:
        if reviewer is None or decision.reviewer == reviewer:
            last[(decision.clip_id, decision.label, decision.reviewer)] = decision
    if reviewer is None:
        return last
    return {(clip, label): decision for (clip, label, _), decision in last.items()}


@dataclass(frozen=True)
class Resolution:
    """What a review decided about one (clip, label): present, absent, unsure (nobody committed) or conflict."""

    clip_id: str
    label: str
    decision: str
    reviewers: tuple[str, ...]  # "name:decision" of every reviewer's last answer


def resolve_decisions(decisions: Iterable[Decision]) -> dict[tuple[str, str], Resolution]:
    """Combine everyone's last decisions: `unsure` abstains, agreement holds, disagreement is a conflict."""
    answers: dict[tuple[str, str], list[Decision]] = {}
    for (clip, label, _), decision in latest(decisions).items():
        answers.setdefault((clip, label), []).append(decision)
    resolved = {}
    for key, given in answers.items():
        votes = {d.decision for d in given if d.decision != "unsure"}
        outcome = votes.pop() if len(votes) == 1 else "conflict" if votes else "unsure"
        reviewers = tuple(sorted(f"{d.reviewer}:{d.decision}" for d in given))
        resolved[key] = Resolution(*key, outcome, reviewers)
    return resolved


def apply_review(manifest: pa.Table, decisions: Iterable[Decision]) -> tuple[pa.Table, dict]:
    """The manifest with the review applied (see the module docstring) and a summary of what changed."""
    resolved = resolve_decisions(decisions)
    by_clip: dict[str, list[Resolution]] = {}
    for resolution in resolved.values():
        by_clip.setdefault(resolution.clip_id, []).append(resolution)
    clip_ids = manifest.column("clip_id").to_pylist()
    labels, negatives = manifest.column("labels").to_pylist(), manifest.column("explicit_negatives").to_pylist()
    review: list[list[dict]] = []
    counts = dict.fromkeys(OUTCOMES, 0)
    for row, clip_id in enumerate(clip_ids):
        positives, absent = list(labels[row] or []), list(negatives[row] or [])
        entries = []
        for resolution in sorted(by_clip.pop(clip_id, []), key=lambda r: r.label):
            decision, label = resolution.decision, resolution.label
            if (decision == "present" and label in absent) or (decision == "absent" and label in positives):
                decision = "contradicted"  # the manifest already says the opposite: it stays as it is
            elif decision == "present" and label not in positives:
                positives.append(label)
            elif decision == "absent" and label not in absent:
                absent.append(label)
            counts[{"present": "accepted", "absent": "rejected"}.get(decision, decision)] += 1
            entries.append({"label": label, "decision": decision, "reviewers": list(resolution.reviewers)})
        labels[row], negatives[row] = positives, absent
        review.append(entries)
    table = manifest
    for name, values in (("labels", labels), ("explicit_negatives", negatives)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.list_(pa.string())))
    if "review" in table.column_names:
        table = table.drop_columns(["review"])
    table = table.append_column("review", pa.array(review, REVIEW_TYPE))
    unknown = sorted(by_clip)
    summary = counts | {
        "reviewed_clips": int(np.sum([bool(entries) for entries in review])),
        "unknown_clips": len(unknown),
        "unknown_clip_ids": unknown[:20],
        "conflict_rule": "each reviewer's last decision counts; 'unsure' abstains; when the other reviewers "
        "disagree the entry is a conflict and left unchanged",
    }
    return table, summary


def write_reviewed_manifest(input_uri: str, decisions_dir: Path, output: Path, format: str | None = None) -> dict:
    """`apply_review` of the decisions in `decisions_dir` to the manifest at `input_uri`, written as a new
    Parquet manifest `output` (which must not exist yet: the input is never modified); returns the summary."""
    if output.suffix != ".parquet":
        raise ReviewError(f"{output}: the reviewed manifest is written as Parquet; name it *.parquet")
    if output.exists():
        raise ReviewError(f"{output}: exists already; give a new path (the input manifest is never modified)")
    decisions = DecisionLog(decisions_dir).read()
    if not decisions:
        raise ReviewError(f"{decisions_dir}: no decisions (decisions-<reviewer>.jsonl files) to apply")
    table, summary = apply_review(read_manifest(input_uri, format=format), decisions)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_suffix(".parquet.tmp")
    pq.write_table(normalize_manifest(table, source=str(output)), temporary)
    os.replace(temporary, output)
    return summary
