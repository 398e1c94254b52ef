"""One entry point that reads any supported manifest format into the normalized schema."""

from __future__ import annotations

import inspect
import posixpath
from collections.abc import Callable
from urllib.parse import urlsplit

import pyarrow as pa

from raymlc.data.arff import read_arff
from raymlc.data.files import parent, under
from raymlc.data.readers import read_audioset, read_csv, read_fsd50k, read_parquet
from raymlc.data.schema import ManifestError

READERS: dict[str, Callable[..., pa.Table]] = {
    "parquet": read_parquet,
    "csv": read_csv,
    "arff": read_arff,
    "audioset": read_audioset,
    "fsd50k": read_fsd50k,
}
FORMAT_OF_EXTENSION = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arff": "arff"}


def read_manifest(
    path_or_uri: str, format: str | None = None, audio_root: str | None = None, **options: str
) -> pa.Table:
    """Read a manifest; `format` defaults to the one of the file extension (audioset/fsd50k must be named).

    Relative `audio` paths are resolved against `audio_root`, by default the manifest's own folder, so that
    every process (the driver, Ray workers in other working directories) opens the same files. `options` go
    to the format's reader, e.g. `xml_path=` (arff), `class_index=` (audioset).
    """
    format = format or _format_of_path(path_or_uri)
    reader = READERS.get(format)
    if reader is None:
        raise ManifestError(f"{path_or_uri}: unknown manifest format {format!r} (known: {sorted(READERS)})")
    accepted = list(inspect.signature(reader).parameters)[1:]
    unknown = sorted(set(options).difference(accepted))
    if unknown:
        raise ManifestError(f"{path_or_uri}: format {format!r} takes no options {unknown} (takes {accepted})")
    table = reader(path_or_uri, **options)
    root = audio_root or parent(path_or_uri)
    audio = table.column("audio").to_pylist()
    resolved = pa.array([None if path is None else under(root, path) for path in audio], type=pa.string())
    return table.set_column(table.schema.get_field_index("audio"), "audio", resolved)


def _format_of_path(path_or_uri: str) -> str:
    extension = posixpath.splitext(urlsplit(path_or_uri).path if "://" in path_or_uri else path_or_uri)[1]
    try:
        return FORMAT_OF_EXTENSION[extension.lower()]
    except KeyError:
        raise ManifestError(
            f"{path_or_uri}: cannot tell the manifest format from the extension {extension!r}; pass format= "
            f"(known formats: {sorted(READERS)}; extensions: {sorted(FORMAT_OF_EXTENSION)})"
        ) from None
