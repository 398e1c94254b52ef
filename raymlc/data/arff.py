"""MULAN multi-label datasets: an ARFF file (dense or sparse) plus an XML file naming the label attributes."""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ElementTree

import arff
import numpy as np
import pyarrow as pa

from raymlc.data.files import exists, open_text, sibling
from raymlc.data.schema import ManifestError, features_type, normalize_manifest
from raymlc.data.vocabulary import declare_labels

NUMERIC = ("NUMERIC", "REAL", "INTEGER")
# An ARFF attribute: its name and either a numeric type name or the list of its nominal values.
Attribute = tuple[str, str | list[str]]


def read_arff(path: str, xml_path: str | None = None) -> pa.Table:
    """Read a MULAN dataset as a manifest: `clip_id` (`"{file stem}:{0-based row}"`), `features`, `labels`.

    The XML label file is `xml_path`, or found beside the ARFF (see `_find_xml`). Label attributes are matched
    by name; a label is present when its value is 1. Every other attribute is a float32 feature: numeric as
    is, nominal as the index of its value in the declared list. Errors name 0-based data rows.
    """
    xml_path = xml_path or _find_xml(path)
    label_names = _parse_label_names(open_text(xml_path), source=xml_path)
    attributes, values = _parse_arff(path)
    column_of = {name: column for column, (name, _) in enumerate(attributes)}
    missing = [name for name in label_names if name not in column_of]
    if missing:
        raise ManifestError(f"{path}: labels of {xml_path} with no ARFF attribute: {missing}")
    label_columns = [column_of[name] for name in label_names]
    feature_columns = sorted(set(range(len(attributes))).difference(label_columns))
    stem = posixpath.basename(path).removesuffix(".arff")
    table = pa.table(
        {
            "clip_id": [f"{stem}:{row}" for row in range(len(values))],
            "features": _feature_array(
                values[:, feature_columns], [attributes[column][0] for column in feature_columns], path
            ),
            "labels": _label_lists(values, attributes, label_columns, path),
        }
    )
    return declare_labels(normalize_manifest(table, source=path), label_names)


def _parse_arff(path: str) -> tuple[list[Attribute], np.ndarray]:
    """(name, type) per attribute, and the data as float64 [N, A]: nominal values as indices, '?' as NaN."""
    try:
        dataset = arff.loads(open_text(path), encode_nominal=True)
    except arff.ArffException as error:
        raise ManifestError(f"{path}: not a readable ARFF file ({error})") from None
    attributes = [(_unescape(name), kind) for name, kind in dataset["attributes"]]
    unsupported = {name: kind for name, kind in attributes if isinstance(kind, str) and kind not in NUMERIC}
    if unsupported:
        raise ManifestError(f"{path}: only numeric and nominal attributes are supported, not {unsupported}")
    values = np.array(dataset["data"], dtype=np.float64).reshape(len(dataset["data"]), len(attributes))
    return attributes, values


def _find_xml(path: str) -> str:
    """`<stem>.xml` beside the ARFF, else the same with a final `-train`/`-test` removed from the stem."""
    stem = posixpath.basename(path).removesuffix(".arff")
    candidates = dict.fromkeys([f"{stem}.xml", re.sub(r"-(train|test)$", "", stem) + ".xml"])
    for name in candidates:
        if exists(sibling(path, name)):
            return sibling(path, name)
    raise ManifestError(f"{path}: no MULAN label file beside it (tried {list(candidates)}); pass xml_path")


def _parse_label_names(text: str, source: str) -> list[str]:
    """Names of the `<label>` elements of a MULAN labels XML (nested hierarchy flattened, document order)."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ManifestError(f"{source}: not a readable XML file ({error})") from None
    names = [element.get("name", "") for element in root.iter() if element.tag.rpartition("}")[2] == "label"]
    if not names or not all(names):
        raise ManifestError(f"{source}: expected <label name=...> elements with non-empty names")
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: duplicate label names")
    return names


def _unescape(name: str) -> str:
    """Undo ARFF backslash escapes in a quoted attribute name (liac-arff keeps them: `Swainson\\'s`)."""
    return re.sub(r"\\(.)", r"\1", name)


def _feature_array(features: np.ndarray, names: list[str], source: str) -> pa.Array:
    """[N, F] values as a fixed-size float32 list column; a missing value ('?') is an error."""
    if not names:
        raise ManifestError(f"{source}: no feature attributes besides the labels")
    missing_rows, missing_columns = np.nonzero(np.isnan(features))
    if len(missing_rows):
        name = names[missing_columns[0]]
        raise ManifestError(f"{source}: row {missing_rows[0]}: feature {name!r} is missing ('?')")
    flat = pa.array(features.astype(np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, type=features_type(len(names)))


def _label_lists(values: np.ndarray, attributes: list[Attribute], columns: list[int], source: str) -> list[list[str]]:
    """Per row, the names of the label attributes whose value is 1 (a missing '?' counts as not present)."""
    positive = np.zeros((len(values), len(columns)), dtype=bool)
    for position, column in enumerate(columns):
        name, kind = attributes[column]
        if isinstance(kind, list):
            if "1" not in kind:
                raise ManifestError(f"{source}: label attribute {name!r} has no value 1 among {kind}")
            positive[:, position] = values[:, column] == kind.index("1")
        else:
            positive[:, position] = values[:, column] == 1
    names = [attributes[column][0] for column in columns]
    return [[names[position] for position in np.flatnonzero(row)] for row in positive]
