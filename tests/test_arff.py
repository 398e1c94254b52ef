from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from raymlc.data import LabelVocabulary, ManifestError, read_manifest
from raymlc.data.arff import read_arff
from raymlc.data.schema import features_type

MULAN_NS = 'xmlns="http://mulan.sourceforge.net/labels"'

# Labels interleaved with features and declared in a different order than in the XML: matching is by name.
DENSE_ARFF = """% a comment
@relation tiny
@attribute f1 numeric
@attribute happy {0,1}
@attribute f2 REAL
@attribute sad {0,1}
@attribute f3 integer
@data
0.5,1,-2,0,3
1.25,0,0,1,4
% a data comment
-1,1,0.75,1,5
"""
DENSE_XML = f"""<?xml version="1.0" encoding="utf-8"?>
<labels {MULAN_NS}>
<label name="sad"></label>
<label name="happy"></label>
</labels>
"""

SPARSE_ARFF = """@relation 'sparse birds'
@attribute loudness numeric
@attribute site {north,south,east}
@attribute Thrush {0,1}
@attribute 'Swainson\\'s Thrush' {0,1}
@attribute 'Stellar\\'s Jay' {0,1}
@data
{0 0.5, 1 east, 2 1, 3 1}
{4 1}
{}
{1 south, 4 1}
"""
# A nested label hierarchy (the parent is a label too); apostrophes literal and as an entity.
SPARSE_XML = f"""<?xml version="1.0" encoding="utf-8"?>
<labels {MULAN_NS}>
  <label name="Thrush">
    <label name="Swainson&apos;s Thrush"></label>
  </label>
  <label name="Stellar's Jay"></label>
</labels>
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_dense_arff_matches_labels_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny.arff", DENSE_ARFF)
    write(tmp_path, "tiny.xml", DENSE_XML)
    table = read_arff(path)
    assert table.schema.field("features").type == features_type(3)
    assert table.select(["clip_id", "features", "labels"]).to_pylist() == [
        {"clip_id": "tiny:0", "features": [0.5, -2.0, 3.0], "labels": ["happy"]},
        {"clip_id": "tiny:1", "features": [1.25, 0.0, 4.0], "labels": ["sad"]},
        {"clip_id": "tiny:2", "features": [-1.0, 0.75, 5.0], "labels": ["sad", "happy"]},
    ]
    assert table.column("audio").null_count == 3
    assert LabelVocabulary.from_table(table).names == ("sad", "happy")


def test_sparse_arff_with_nominal_feature_and_escaped_label_names(tmp_path: Path) -> None:
    path = write(tmp_path, "birds-train.arff", SPARSE_ARFF)
    xml_path = write(tmp_path, "hierarchy.xml", SPARSE_XML)
    table = read_manifest(path, xml_path=xml_path)
    # Omitted sparse values are 0: for the nominal `site` that is index 0 ("north").
    assert table.select(["clip_id", "features", "labels"]).to_pylist() == [
        {"clip_id": "birds-train:0", "features": [0.5, 2.0], "labels": ["Thrush", "Swainson's Thrush"]},
        {"clip_id": "birds-train:1", "features": [0.0, 0.0], "labels": ["Stellar's Jay"]},
        {"clip_id": "birds-train:2", "features": [0.0, 0.0], "labels": []},
        {"clip_id": "birds-train:3", "features": [0.0, 1.0], "labels": ["Stellar's Jay"]},
    ]
    assert LabelVocabulary.from_table(table).names == ("Thrush", "Swainson's Thrush", "Stellar's Jay")


def test_xml_label_without_attribute_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "birds.arff", SPARSE_ARFF)
    write(tmp_path, "birds.xml", SPARSE_XML.replace("</labels>", '<label name="Hermit Thrush"/></labels>'))
    with pytest.raises(ManifestError, match=r"no ARFF attribute: \['Hermit Thrush'\]"):
        read_arff(path)


def test_xml_found_beside_arff_without_split_suffix(tmp_path: Path) -> None:
    write(tmp_path, "tiny.xml", DENSE_XML)
    train = write(tmp_path, "tiny-train.arff", DENSE_ARFF)
    assert read_arff(train).column("clip_id")[0].as_py() == "tiny-train:0"
    # A file-specific XML wins over the shared one; `sad` is then a feature.
    write(tmp_path, "tiny-train.xml", DENSE_XML.replace('<label name="sad"></label>\n', ""))
    table = read_arff(train)
    assert LabelVocabulary.from_table(table).names == ("happy",)
    assert table.schema.field("features").type == features_type(4)


def test_missing_xml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "alone-test.arff", DENSE_ARFF)
    with pytest.raises(ManifestError, match=r"tried \['alone-test.xml', 'alone.xml'\]"):
        read_arff(path)


def test_missing_feature_value_names_row_and_attribute(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny.arff", DENSE_ARFF.replace("1.25,0,0,1,4", "1.25,0,?,1,4"))
    write(tmp_path, "tiny.xml", DENSE_XML)
    with pytest.raises(ManifestError, match=r"row 1: feature 'f2' is missing"):
        read_arff(path)


def test_string_attribute_is_rejected(tmp_path: Path) -> None:
    text = DENSE_ARFF.replace("@attribute f3 integer", "@attribute f3 string")
    path = write(tmp_path, "tiny.arff", text)
    write(tmp_path, "tiny.xml", DENSE_XML)
    with pytest.raises(ManifestError, match="'f3': 'STRING'"):
        read_arff(path)


def test_emotions(shared_data: Path) -> None:
    table = read_manifest(str(shared_data / "mulan_emotions" / "emotions.arff"))
    assert table.num_rows == 593
    assert table.schema.field("features").type == features_type(72)
    assert LabelVocabulary.from_table(table).names == (
        "amazed-suprised",
        "happy-pleased",
        "relaxing-calm",
        "quiet-still",
        "sad-lonely",
        "angry-aggresive",
    )
    assert pc.min(pc.list_value_length(table.column("labels"))).as_py() == 1


def test_emotions_train_finds_shared_xml(shared_data: Path) -> None:
    table = read_manifest(str(shared_data / "mulan_emotions" / "emotions-train.arff"))
    assert table.num_rows == 391
    assert len(LabelVocabulary.from_table(table)) == 6


def test_birds(shared_data: Path) -> None:
    table = read_manifest(str(shared_data / "mulan_birds" / "birds.arff"))
    assert table.num_rows == 645
    assert table.schema.field("features").type == features_type(260)
    vocabulary = LabelVocabulary.from_table(table)
    assert len(vocabulary) == 19
    assert vocabulary.names[10] == "Swainson's Thrush"
    assert pc.sum(pc.equal(pc.list_value_length(table.column("labels")), 0)).as_py() == 294
    features = table.column("features").combine_chunks().flatten().to_numpy().reshape(645, 260)
    # Row 0 has hasSegments=1 and location=1, the third value of {2,10,1,7,5,4,17,15,16,8,13,11}.
    assert features[0, 258:].tolist() == [1.0, 2.0]
    assert set(features[:, 259].tolist()) <= set(map(float, range(12)))


def test_arff_through_a_file_uri(tmp_path: Path) -> None:
    write(tmp_path, "tiny.xml", DENSE_XML)
    path = write(tmp_path, "tiny.arff", DENSE_ARFF)
    table = read_manifest(f"file://{path}")
    assert table.column("clip_id").to_pylist() == ["tiny:0", "tiny:1", "tiny:2"]
