"""The splits a run reads, as MLflow datasets: the runs table's Dataset column and filter.

Each split is a :class:`SplitDataset`: named after the dataset (a folder dataset after its
folder), with the split's content hash as its digest, where the images came from as its
source, and the number of images, classes and image shape as its profile. The data itself
stays with DVC.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.schema import TensorDatasetSchema
from mlflow.exceptions import MlflowException
from mlflow.types import Schema, TensorSpec

from imgclf.data.splits import Meta

# the split a run reads, as MLflow's ``mlflow.data.context`` tag says it
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
ARCHIVE = re.compile(r"\.(zip|tar|tar\.gz|tgz)$")


def dataset_name(meta: Meta) -> str:
    """The dataset's name; a folder dataset is named after its folder (or archive)."""
    if meta.dataset != "folder" or not meta.source:
        return meta.dataset
    return ARCHIVE.sub("", PurePosixPath(meta.source.rstrip("/")).name) or meta.dataset


def _source(uri: str) -> DatasetSource:
    if "://" in uri:
        return HTTPDatasetSource(uri)
    try:
        with warnings.catch_warnings():  # a local path resolves through two equal sources
            warnings.filterwarnings("ignore", "The specified dataset source can be")
            return resolve_dataset_source(uri)
    except MlflowException:
        return HTTPDatasetSource(uri)  # nothing better knows a bare name


class SplitDataset(MetaDataset):
    """One split: metadata only (name, digest, source, schema and profile)."""

    def __init__(self, meta: Meta, split: str, digest: str) -> None:
        self._profile = {
            "split": split,
            "images": sum(meta.counts.get(split, [])),
            "classes": len(meta.classes),
            "image_shape": list(meta.image_shape),
            "data_version": meta.data_version,
        }
        self._tensors = TensorDatasetSchema(
            features=Schema([TensorSpec(np.dtype(np.uint8), (-1, *meta.image_shape), "image")]),
            targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]))
        super().__init__(_source(meta.source or meta.dataset), name=dataset_name(meta),
                         digest=digest, schema=self._tensors.features)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        # the schema in the form MLflow's tensor datasets use, and the profile beside it
        config = super().to_dict()
        config["schema"] = json.dumps(self._tensors.to_dict())
        config["profile"] = json.dumps(self.profile)
        return config


def split_dataset(meta: Meta, split: str, digest: str) -> SplitDataset:
    """The MLflow dataset of ``split`` (``train``, ``val`` or ``test``) whose content hash is
    ``digest``."""
    return SplitDataset(meta, split, digest)
