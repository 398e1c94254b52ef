"""Manifest reading, label vocabulary and split assignment (pure: no Ray)."""

from raymlc.data.manifest import read_manifest
from raymlc.data.schema import ManifestError, normalize_manifest
from raymlc.data.splits import assign_splits
from raymlc.data.vocabulary import LabelVocabulary

__all__ = ["LabelVocabulary", "ManifestError", "assign_splits", "normalize_manifest", "read_manifest"]
