"""Ray Data relabeling: stream a manifest through a tagger bundle and write an enhanced manifest, resumably.

Rows are cut into parts of `rows_per_part` (part p = rows [p·R, (p+1)·R)). Pending parts flow through
Ray Data (decode in tasks with `scoring.decode_batch`, tag in an autoscaling actor pool); the driver
assembles each part's rows and commits it: written under a temporary name, then renamed. A rerun skips
committed parts. When every part is committed, the run writes the review queue, rejects, summary,
`_parts.json` (parts, rows, sha256) and last `_SUCCESS`. Layout of the output directory:

    _run.json               what the run is (input + checksum, bundle, output-affecting settings)
    manifest/part-NNNNN.parquet   the input rows + row_index, proposed_labels, proposed_scores,
                            proposed_margins, reject_reason (labels and explicit_negatives untouched)
    review_queue.parquet/.csv     top proposals per class by margin, with audio path and segment
    rejects.parquet         unreadable clips: row_index, clip_id, audio, reason
    summary.json            per-class counts and proposal rates (precision/recall when removed_labels exist)
    _parts.json, _SUCCESS   the commit record

Model calls take fixed groups of `batch_size` rows (by row position), so a resumed run writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from pyarrow.fs import FileSelector, FileType
from ray.data import ActorPoolStrategy

from raymlc.bundle import load_bundle
from raymlc.config import RelabelConfig, load_with_overrides
from raymlc.data import read_manifest
from raymlc.data.files import absolute, resolve
from raymlc.data.float_lists import to_arrays
from raymlc.distributed.cluster import ensure_ray
from raymlc.distributed.scoring import decode_batch
from raymlc.relabeling import PartAssembler, ProposalSummary, ReviewQueue, propose
from raymlc.reviewing import QUEUE_SCHEMA

RUN, PARTS, SUCCESS, SUMMARY = "_run.json", "_parts.json", "_SUCCESS", "summary.json"
PART_DIR, REJECTS, REVIEW = "manifest", "rejects.parquet", "review_queue"
DECODE_COLUMNS = ("row_index", "clip_id", "audio", "start_s", "end_s", "labels", "explicit_negatives", "removed_labels")
FLOATS = pa.list_(pa.float32())
PROPOSAL_SCHEMA = pa.schema(
    [
        ("row_index", pa.int64()),
        ("proposed_labels", pa.list_(pa.string())),
        ("proposed_scores", FLOATS),
        ("proposed_margins", FLOATS),
        ("reject_reason", pa.string()),
    ]
)


class RelabelError(ValueError):
    """An input, bundle or output directory a relabel run cannot use."""


def relabel_config(path: str | None = None, **overrides: object) -> RelabelConfig:
    """The RelabelConfig at `path` (defaults without one), with the non-None `overrides` applied."""
    return load_with_overrides(path, RelabelConfig, **overrides)


class ProposalTagger:
    """Ray Data actor: tags decoded clips with the bundle and returns each row's proposals."""

    def __init__(self, bundle_uri: str, batch_size: int, total_rows: int, min_margin: float, threads: int) -> None:
        torch.set_num_threads(threads)
        self.tagger = load_bundle(bundle_uri)
        self.batch_size, self.total_rows, self.min_margin = batch_size, total_rows, min_margin

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows are tagged in groups of the same `row_index // batch_size`, which must arrive whole."""
        decoded = pc.is_null(batch["error"])
        waves = dict(
            zip(
                batch["row_index"].filter(decoded).to_pylist(),
                to_arrays(batch["waveform"].filter(decoded)),
                strict=True,
            )
        )
        rows = batch.drop_columns(["waveform"]).to_pylist()
        groups: dict[int, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["row_index"] // self.batch_size, []).append(row)
        out = []
        for group, members in sorted(groups.items()):
            expected = min(self.batch_size, self.total_rows - group * self.batch_size)
            if len(members) != expected:
                raise RuntimeError(
                    f"model batch {group} arrived split ({len(members)} of {expected} rows): a decoded part "
                    "exceeded Ray Data's block size; lower rows_per_part"
                )
            out.extend(self._tag(members, waves))
        return pa.Table.from_pylist(out, schema=PROPOSAL_SCHEMA)

    def _tag(self, members: list[dict], waves: dict[int, np.ndarray]) -> list[dict]:
        ok = [row for row in members if row["error"] is None]
        result = self.tagger.tag_waveforms([waves[row["row_index"]] for row in ok])
        proposals = propose(
            result.logits,
            result.thresholds,
            self.tagger.vocabulary.names,
            [row["labels"] for row in ok],
            [row["explicit_negatives"] for row in ok],
            self.min_margin,
        )
        by_row = dict(zip((row["row_index"] for row in ok), proposals, strict=True))
        out = []
        for row in members:
            found = by_row.get(row["row_index"])
            out.append(
                {
                    "row_index": row["row_index"],
                    "proposed_labels": found.labels if found else [],
                    "proposed_scores": found.scores if found else [],
                    "proposed_margins": found.margins if found else [],
                    "reject_reason": row["error"],
                }
            )
        return out


class OutputDir:
    """The run's output folder (local path or URI); files are written under a temporary name, then moved."""

    def __init__(self, uri: str) -> None:
        self.filesystem, self.root = resolve(uri)
        self.uri = uri

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.path(name)).type != FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(name)) as stream:
            return stream.read()

    def commit(self, name: str, payload: bytes) -> None:
        """Write `name` atomically: a reader sees the whole file or none (rename on local disks)."""
        folder, base = posixpath.split(self.path(name))
        self.filesystem.create_dir(folder, recursive=True)
        temporary = posixpath.join(folder, f".{base}.tmp-{uuid.uuid4().hex}")
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(payload)
        self.filesystem.move(temporary, self.path(name))

    def listing(self, folder: str = "") -> list[str]:
        """Names of the files directly in `folder` (empty when it does not exist)."""
        selector = FileSelector(self.path(folder) if folder else self.root, allow_not_found=True)
        return sorted(posixpath.basename(info.path) for info in self.filesystem.get_file_info(selector))

    def remove_temporaries(self) -> None:
        """Delete the half-written files a crashed run left behind (ours: `.NAME.tmp-HEX`)."""
        for folder in ("", PART_DIR):
            for name in self.listing(folder):
                if name.startswith(".") and ".tmp-" in name:
                    self.filesystem.delete_file(self.path(posixpath.join(folder, name)))


def part_name(part: int) -> str:
    return f"{PART_DIR}/part-{part:05d}.parquet"


def sha256_of(uri: str) -> str:
    filesystem, path = resolve(uri)
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _open_run(output: OutputDir, run: dict) -> None:
    """Start or resume the run in `output`; refuse folders that hold something else."""
    if output.exists(RUN):
        previous = json.loads(output.read(RUN))
        changed = sorted(key for key in run.keys() | previous.keys() if run.get(key) != previous.get(key))
        if changed:
            raise RelabelError(
                f"{output.uri}: holds a relabel run with different {', '.join(changed)}; use a new --output"
            )
        output.remove_temporaries()
        return
    if output.listing():
        raise RelabelError(f"{output.uri}: exists and is not a relabel run; give a new (or empty) --output")
    output.commit(RUN, (json.dumps(run, indent=2) + "\n").encode())


def _proposal_stream(
    table: pa.Table,
    parts: list[int],
    assembler: PartAssembler,
    bundle_uri: str,
    sample_rate: int,
    config: RelabelConfig,
) -> Iterator[pa.Table]:
    """Proposal rows of the given parts, streamed from Ray Data as the actor pool produces them."""
    blocks = [table.slice(start, stop - start) for start, stop in map(assembler.part_rows, parts)]
    decoded = ray.data.from_arrow(blocks).map_batches(
        decode_batch,
        fn_kwargs={"sample_rate": sample_rate},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=config.decode_cpus,
    )
    tagged = decoded.map_batches(
        ProposalTagger,
        fn_constructor_kwargs={
            "bundle_uri": bundle_uri,
            "batch_size": config.batch_size,
            "total_rows": assembler.total_rows,
            "min_margin": config.min_margin,
            "threads": config.torch_threads,
        },
        batch_format="pyarrow",
        batch_size=None,
        compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
        num_cpus=config.cpus_per_actor,
    )
    yield from tagged.iter_batches(batch_size=None, batch_format="pyarrow")


def _enhanced_part(manifest: pa.Table, start: int, proposals: pa.Table) -> pa.Table:
    rows = manifest.slice(start, len(proposals))
    for name in PROPOSAL_SCHEMA.names[1:]:
        rows = rows.append_column(name, proposals[name])
    return rows


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _review_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["label", "rank"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "labels": ";".join(row["labels"])} for row in rows)
    return text.getvalue().encode()


def _finalize(
    output: OutputDir, assembler: PartAssembler, n_parts: int, names: tuple[str, ...], config: RelabelConfig, run: dict
) -> dict:
    """Read the committed parts back; write review queue, rejects, summary, `_parts.json`, then `_SUCCESS`."""
    summary, queue = ProposalSummary(names), ReviewQueue(config.review_per_class)
    rejects, records = [], []
    for part in range(n_parts):
        payload = output.read(part_name(part))
        table = pq.read_table(io.BytesIO(payload))
        start, stop = assembler.part_rows(part)
        records.append(
            {
                "part": part,
                "file": part_name(part),
                "rows": [start, stop],
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        )
        rows = table.to_pylist()
        summary.update(
            [row["labels"] for row in rows],
            [row["explicit_negatives"] for row in rows],
            [row["removed_labels"] for row in rows],
            [row["proposed_labels"] for row in rows],
            [row["reject_reason"] is not None for row in rows],
        )
        for row in rows:
            if row["reject_reason"] is not None:
                rejects.append(
                    {key: row[key] for key in ("row_index", "clip_id", "audio")} | {"reason": row["reject_reason"]}
                )
            for label, score, margin in zip(
                row["proposed_labels"], row["proposed_scores"], row["proposed_margins"], strict=True
            ):
                entry = {key: row[key] for key in ("clip_id", "audio", "start_s", "end_s")}
                entry |= {"score": score, "margin": margin, "labels": row["labels"], "row_index": row["row_index"]}
                queue.add(label, margin, row["row_index"], entry)
        queue.trim()
    review = queue.rows()
    output.commit(f"{REVIEW}.parquet", _parquet_bytes(pa.Table.from_pylist(review, schema=QUEUE_SCHEMA)))
    output.commit(f"{REVIEW}.csv", _review_csv(review))
    reject_schema = pa.schema(
        [("row_index", pa.int64()), ("clip_id", pa.string()), ("audio", pa.string()), ("reason", pa.string())]
    )
    output.commit(REJECTS, _parquet_bytes(pa.Table.from_pylist(rejects, schema=reject_schema)))
    result = {"input": run["input"], "bundle": run["bundle"], "parts": n_parts, **summary.to_dict(), "rejects": rejects}
    output.commit(SUMMARY, (json.dumps(result, indent=2) + "\n").encode())
    parts_record = {"rows": assembler.total_rows, "rows_per_part": assembler.rows_per_part, "parts": records}
    output.commit(PARTS, (json.dumps(parts_record, indent=2) + "\n").encode())
    output.commit(SUCCESS, b"")
    return result


def relabel_manifest(
    bundle_uri: str,
    input_uri: str,
    output_uri: str,
    config: RelabelConfig,
    input_format: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Relabel every clip of the manifest at `input_uri` with the bundle; returns the run's summary.

    Resumes the run found in `output_uri` (committed parts are kept); the input is only read.
    """
    bundle_uri, input_uri = absolute(bundle_uri), absolute(input_uri)
    tagger = load_bundle(bundle_uri)
    if not tagger.is_audio:
        raise RelabelError(f"{bundle_uri}: relabel needs an audio (waveform) tagger bundle")
    manifest = read_manifest(input_uri, format=input_format)
    if "audio" not in manifest.column_names or pc.any(pc.is_null(manifest["audio"])).as_py():
        raise RelabelError(f"{input_uri}: every row needs an `audio` path to relabel it")
    manifest = manifest.append_column("row_index", pa.array(np.arange(len(manifest), dtype=np.int64)))
    run = {
        "input": input_uri,
        "input_sha256": sha256_of(input_uri),
        "input_format": input_format,
        "rows": len(manifest),
        "bundle": bundle_uri,
        "bundle_created": tagger.metadata.get("created"),
        **config.model_dump(include={"rows_per_part", "batch_size", "min_margin", "review_per_class"}),
    }
    output = OutputDir(output_uri)
    _open_run(output, run)
    if output.exists(SUCCESS):
        log(f"relabel: {output_uri} is already complete")
        return json.loads(output.read(SUMMARY))

    assembler = PartAssembler(len(manifest), config.rows_per_part)
    n_parts = -(-len(manifest) // config.rows_per_part)
    committed = {int(name[5:10]) for name in output.listing(PART_DIR) if name.startswith("part-")}
    pending = [part for part in range(n_parts) if part not in committed]
    log(f"relabel: {len(manifest)} clips in {n_parts} parts; {len(committed)} already committed, {len(pending)} to do")
    if pending:
        ensure_ray()
        started, done_rows = time.perf_counter(), 0
        stream = _proposal_stream(
            manifest.select(DECODE_COLUMNS), pending, assembler, bundle_uri, tagger.sample_rate, config
        )
        for batch in stream:
            for part, proposals in assembler.add(batch):
                start, _ = assembler.part_rows(part)
                output.commit(part_name(part), _parquet_bytes(_enhanced_part(manifest, start, proposals)))
                committed.add(part)
                done_rows += len(proposals)
                rate = done_rows / (time.perf_counter() - started)
                log(f"relabel: part {part} committed ({len(committed)}/{n_parts} parts, {rate:.1f} clips/s)")
        if assembler.incomplete:
            raise RuntimeError(f"parts {assembler.incomplete} never received all their rows")
    result = _finalize(output, assembler, n_parts, tagger.vocabulary.names, config, run)
    total = result["total"]
    log(
        f"relabel: {total['clips_scanned']} clips scanned, {total['proposals']} proposals, "
        f"{total['rejected']} rejected; wrote {output_uri}"
    )
    for reject in result["rejects"][:10]:
        log(f"rejected {reject['clip_id']}: {reject['reason']}")
    return result
