"""Files by local path or by URI (s3://, gs://, file://...) through pyarrow.fs."""

from __future__ import annotations

import json
import os
import posixpath
from urllib.parse import urlsplit, urlunsplit

from pyarrow.fs import FileSystem, FileType, LocalFileSystem


def is_uri(path_or_uri: str) -> bool:
    return "://" in path_or_uri


def absolute(path_or_uri: str) -> str:
    """Local paths made absolute (Ray workers run in other working directories); URIs as given."""
    return path_or_uri if is_uri(path_or_uri) else os.path.abspath(os.path.expanduser(path_or_uri))


def write_json(path: os.PathLike | str, payload: dict) -> None:
    """`payload` as indented JSON with a final newline."""
    with open(path, "w") as file:
        file.write(json.dumps(payload, indent=2) + "\n")


def resolve(path_or_uri: str) -> tuple[FileSystem, str]:
    """The filesystem holding `path_or_uri` and the path inside it (absolute for local paths)."""
    if is_uri(path_or_uri):
        return FileSystem.from_uri(path_or_uri)
    return LocalFileSystem(), absolute(path_or_uri)


def open_text(path_or_uri: str) -> str:
    """The whole file decoded as UTF-8 (a leading byte-order mark is dropped)."""
    filesystem, path = resolve(path_or_uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode("utf-8-sig")


def exists(path_or_uri: str) -> bool:
    filesystem, path = resolve(path_or_uri)
    return filesystem.get_file_info(path).type != FileType.NotFound


def parent(path_or_uri: str) -> str:
    """The folder holding `path_or_uri`, in the same form: an absolute local path, or a URI without query."""
    if not is_uri(path_or_uri):
        return os.path.dirname(resolve(path_or_uri)[1])
    parts = urlsplit(path_or_uri)
    return urlunsplit(parts._replace(path=posixpath.dirname(parts.path), query="", fragment=""))


def sibling(path_or_uri: str, name: str) -> str:
    """The file called `name` in the folder of `path_or_uri`."""
    return under(parent(path_or_uri), name)


def under(root: str, path: str) -> str:
    """`path` as it is when it is a URI or an absolute local path, else relative to `root` (a folder or URI)."""
    if is_uri(path) or os.path.isabs(os.path.expanduser(path)):
        return os.path.expanduser(path) if not is_uri(path) else path
    return posixpath.join(root, path) if is_uri(root) else os.path.join(absolute(root), path)
