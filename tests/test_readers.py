from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymlc.data import LabelVocabulary, ManifestError, read_manifest
from raymlc.data.readers import read_audioset, read_fsd50k
from raymlc.data.vocabulary import declare_labels

LABELS = pa.list_(pa.string())
EMPTY_OPTIONAL = {"explicit_negatives": [], "removed_labels": [], "split": None}

CLASS_INDEX = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/05zppz,"Male speech, man speaking"
2,/m/04rlf,"Music"
"""
SEGMENTS = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"
-0RWZT-miFs, 420.000, 430.000, "/m/04rlf"

abc_DEF123, 0.500, 10.500, "/m/05zppz"
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_parquet_round_trip_keeps_declared_labels(tmp_path: Path) -> None:
    source = pa.table(
        {
            "clip_id": ["a", "b"],
            "features": pa.array([[0.5, 1.0], [2.0, -1.0]], type=pa.list_(pa.float64())),
            "labels": pa.array([["x"], []], type=LABELS),
            "split": ["train", None],
            "note": ["kept", "too"],
        }
    )
    for name in ("m.parquet", "m.pq"):
        pq.write_table(declare_labels(source, ["y", "x"]), tmp_path / name)
        table = read_manifest(str(tmp_path / name))
        assert table.schema.field("features").type == pa.list_(pa.float32(), 2)
        assert table.to_pylist() == [
            {
                "clip_id": "a",
                "audio": None,
                "start_s": None,
                "end_s": None,
                "features": [0.5, 1.0],
                "labels": ["x"],
                "explicit_negatives": [],
                "removed_labels": [],
                "split": "train",
                "note": "kept",
            },
            {
                "clip_id": "b",
                "audio": None,
                "start_s": None,
                "end_s": None,
                "features": [2.0, -1.0],
                "labels": [],
                "explicit_negatives": [],
                "removed_labels": [],
                "split": None,
                "note": "too",
            },
        ]
        assert LabelVocabulary.from_table(table).names == ("y", "x")


def test_csv_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        "clip_id,audio,start_s,end_s,labels,explicit_negatives,split,speaker\n"
        'c1,/a/1.wav,1.5,,"Speech; Male speech, man speaking",Music,train,007\n'
        "c2,/a/2.wav,,,,,,\n",
    )
    table = read_manifest(path)
    assert table.to_pylist() == [
        {
            "clip_id": "c1",
            "audio": "/a/1.wav",
            "start_s": 1.5,
            "end_s": None,
            "labels": ["Speech", "Male speech, man speaking"],
            "explicit_negatives": ["Music"],
            "removed_labels": [],
            "split": "train",
            "speaker": "007",
        },
        {
            "clip_id": "c2",
            "audio": "/a/2.wav",
            "start_s": None,
            "end_s": None,
            "labels": [],
            "explicit_negatives": [],
            "removed_labels": [],
            "split": None,
            "speaker": "",
        },
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("audio,labels\n/a.wav,x\n", r"line 1: missing columns \['clip_id'\]"),
        (
            "clip_id,audio,labels\nc1,/a.wav,x\nc2,/b.wav,y\nc1,/c.wav,z\n",
            r"line 4: duplicate clip id 'c1'.*line 2",
        ),
        ("clip_id,audio,labels\nc1,/a.wav,x\n,/b.wav,y\n", "line 3: empty clip id"),
        ("clip_id,audio,labels,start_s\nc1,/a.wav,x,soon\n", "line 2: start_s 'soon' is not a number"),
        ("clip_id,audio,labels\nc1,/a.wav\n", "line 2: expected 3 fields"),
        ("clip_id,features,labels\nc1,1,x\n", "'features' column is not supported"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(write(tmp_path, "m.csv", text))


def test_audioset(tmp_path: Path) -> None:
    write(tmp_path, "class_labels_indices.csv", CLASS_INDEX)
    path = write(tmp_path, "segments.csv", SEGMENTS)
    table = read_manifest(path, format="audioset")
    folder = str(tmp_path)
    assert table.to_pylist() == [
        {
            "clip_id": "--PJHxphWEs_30.000",
            "audio": f"{folder}/--PJHxphWEs.flac",
            "start_s": 30.0,
            "end_s": 40.0,
            "labels": ["Speech", "Male speech, man speaking"],
            **EMPTY_OPTIONAL,
        },
        {
            "clip_id": "-0RWZT-miFs_420.000",
            "audio": f"{folder}/-0RWZT-miFs.flac",
            "start_s": 420.0,
            "end_s": 430.0,
            "labels": ["Music"],
            **EMPTY_OPTIONAL,
        },
        {
            "clip_id": "abc_DEF123_0.500",
            "audio": f"{folder}/abc_DEF123.flac",
            "start_s": 0.5,
            "end_s": 10.5,
            "labels": ["Male speech, man speaking"],
            **EMPTY_OPTIONAL,
        },
    ]
    # The vocabulary follows the class index, not the alphabet.
    assert LabelVocabulary.from_table(table).names == ("Speech", "Male speech, man speaking", "Music")


def test_audioset_options(tmp_path: Path) -> None:
    class_index = write(tmp_path, "classes.csv", CLASS_INDEX)
    (tmp_path / "lists").mkdir()
    path = write(tmp_path / "lists", "eval.csv", SEGMENTS)
    table = read_manifest(path, format="audioset", class_index=class_index, audio_root="s3://bucket/audio")
    assert table.column("audio")[2].as_py() == "s3://bucket/audio/abc_DEF123.flac"


def test_audioset_unknown_mid_names_line_and_ytid(tmp_path: Path) -> None:
    class_index = write(tmp_path, "classes.csv", CLASS_INDEX)
    path = write(tmp_path, "s.csv", SEGMENTS.replace('"/m/04rlf"', '"/m/04rlf,/m/zzz"'))
    with pytest.raises(ManifestError, match=r"line 5 \(YTID '-0RWZT-miFs'\): MIDs \['/m/zzz'\]"):
        read_audioset(path, class_index=class_index)


def test_audioset_duplicate_segment(tmp_path: Path) -> None:
    class_index = write(tmp_path, "classes.csv", CLASS_INDEX)
    path = write(tmp_path, "s.csv", SEGMENTS + '--PJHxphWEs, 30.000, 40.000, "/m/04rlf"\n')
    with pytest.raises(ManifestError, match=r"line 8: duplicate clip id '--PJHxphWEs_30.000' \(first: line 4\)"):
        read_audioset(path, class_index=class_index)


def test_fsd50k(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dev.csv",
        "fname,labels,mids,split\n"
        '64760,"Electric_guitar,Guitar,Music","/m/02sgy,/m/0342h,/m/04rlf",train\n'
        "16399,Drawer_open_or_close,/m/0fqfqc,val\n",
    )
    table = read_manifest(path, format="fsd50k")
    assert table.to_pylist() == [
        {
            "clip_id": "64760",
            "audio": f"{tmp_path}/64760.wav",
            "start_s": None,
            "end_s": None,
            "labels": ["Electric_guitar", "Guitar", "Music"],
            "explicit_negatives": [],
            "removed_labels": [],
            "split": "train",
        },
        {
            "clip_id": "16399",
            "audio": f"{tmp_path}/16399.wav",
            "start_s": None,
            "end_s": None,
            "labels": ["Drawer_open_or_close"],
            "explicit_negatives": [],
            "removed_labels": [],
            "split": "val",
        },
    ]


def test_fsd50k_without_split_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "eval.csv", 'fname,labels,mids\n37199,"Bark,Dog","/m/05tny_,/m/0bt9lr"\n')
    table = read_manifest(path, format="fsd50k", audio_root="/audio/eval")
    assert table.column("audio").to_pylist() == ["/audio/eval/37199.wav"]
    assert table.column("split").to_pylist() == [None]
    bad_split = write(tmp_path, "bad.csv", "fname,labels,mids,split\n1,Bark,/m/05tny_,holdout\n")
    with pytest.raises(ManifestError, match="line 2: split 'holdout'"):
        read_fsd50k(bad_split)
    no_labels = write(tmp_path, "nolabels.csv", "fname,mids\n1,/m/05tny_\n")
    with pytest.raises(ManifestError, match=r"missing columns \['labels'\]"):
        read_fsd50k(no_labels)


def test_format_selection_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"extension '.tsv'.*'arff', 'audioset', 'csv', 'fsd50k', 'parquet'"):
        read_manifest(str(tmp_path / "m.tsv"))
    with pytest.raises(ManifestError, match="unknown manifest format 'json'"):
        read_manifest(str(tmp_path / "m.csv"), format="json")
    with pytest.raises(ManifestError, match=r"takes no options \['class_index'\]"):
        read_manifest(str(tmp_path / "m.csv"), class_index="x.csv")


def test_audioset_balanced_train(shared_data: Path) -> None:
    table = read_manifest(str(shared_data / "audioset_metadata" / "balanced_train_segments.csv"), format="audioset")
    assert table.num_rows == 22_160
    assert pc.sum(pc.list_value_length(table.column("labels"))).as_py() == 52_882
    assert len(LabelVocabulary.from_table(table)) == 527
