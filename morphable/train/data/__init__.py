"""Training data on disk: JSONL face manifests and the prepared real-photo datasets
(``morphable data prepare``: landmarks, aligned dlib chips, cached dlib descriptors and pooled features).
"""
from morphable.train.data.manifest import Dataset, ManifestItem, load_dataset, read_manifest, write_manifest
from morphable.train.data.prepare import BadItem, PrepareReport, prepare_dataset, read_identities

__all__ = [
    "BadItem",
    "Dataset",
    "ManifestItem",
    "PrepareReport",
    "load_dataset",
    "prepare_dataset",
    "read_identities",
    "read_manifest",
    "write_manifest",
]
