"""Stage 2: decode the raw files once into uint8 tensors and split train/validation.

The validation split is seeded and stratified by class; the per-channel mean and std come
from the training split only, so nothing about validation or test leaks into training.

    python -m imgclf.preprocess --params params.yaml --raw data/raw --out data/processed \\
        --metrics reports/preprocess_metrics.json
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.figure import Figure

from imgclf import tracking
from imgclf.cli import run_stage, stage_parser
from imgclf.data import Meta, Split, channel_stats, save_splits, stratified_split
from imgclf.datasets import DATASETS, DataError, DatasetSpec, read_raw
from imgclf.files import write_json
from imgclf.settings import DataSettings, load_settings

SAMPLES_PER_CLASS = 8


def preprocess(raw_dir: Path, spec: DatasetSpec, cfg: DataSettings
               ) -> tuple[dict[str, Split], Meta]:
    """Decode ``raw_dir`` and return the train/val/test splits and their metadata."""
    decoded = read_raw(spec, raw_dir)
    full_train = Split(*decoded["train"])
    test = Split(*decoded["test"])
    if cfg.train_limit is not None and cfg.train_limit < len(full_train):
        full_train = full_train.take(stratified_split(full_train.labels, cfg.train_limit,
                                                      cfg.seed)[0])
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        test = test.take(stratified_split(test.labels, cfg.test_limit, cfg.seed)[0])
    val_index, train_index = stratified_split(full_train.labels, cfg.val_fraction, cfg.seed)
    splits = {"train": full_train.take(train_index), "val": full_train.take(val_index),
              "test": test}
    mean, std = channel_stats(splits["train"].images)
    meta = Meta(
        dataset=spec.name,
        classes=list(spec.classes),
        image_shape=list(spec.image_shape),
        mean=mean,
        std=std,
        counts={name: split.class_counts(len(spec.classes)) for name, split in splits.items()},
    )
    return splits, meta


def sample_grid(split: Split, classes: list[str], per_class: int = SAMPLES_PER_CLASS) -> Figure:
    """A figure with one row of sample images per class."""
    figure = Figure(figsize=(per_class * 0.9, len(classes) * 0.95))
    axes = figure.subplots(len(classes), per_class, squeeze=False)
    for row, name in enumerate(classes):
        picks = torch.nonzero(split.labels == row).flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(picks):
                image = split.images[picks[col]].permute(1, 2, 0).squeeze(-1)
                ax.imshow(image.numpy(), cmap="gray" if image.ndim == 2 else None,
                          vmin=0, vmax=255)
        axes[row][0].set_title(name, fontsize=7, loc="left")
    figure.tight_layout()
    return figure


def read_manifest(raw_dir: Path, dataset: str) -> dict:
    """The download stage's manifest, checked to describe ``dataset``."""
    try:
        manifest = json.loads((raw_dir / "manifest.json").read_text())
        found = manifest["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{raw_dir}: no download manifest; run the download stage first "
                        "(dvc repro download)") from None
    if found != dataset:
        raise DataError(f"{raw_dir} holds {found} but data.dataset is {dataset}; "
                        "rerun the download stage (dvc repro)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="folder from the download stage")
    parser.add_argument("--out", type=Path, required=True, help="folder for the splits")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    args = parser.parse_args(argv)

    settings = load_settings(args.params)
    spec = DATASETS[settings.data.dataset]
    manifest = read_manifest(args.raw, spec.name)
    with tracking.stage_run("preprocess", settings, upstream=manifest.get("lineage"),
                            data_version=manifest.get("data_version"), deps=[args.raw]) as run:
        splits, meta = preprocess(args.raw, spec, settings.data)
        meta = replace(meta, data_version=manifest.get("data_version", ""),
                       lineage=run.lineage)
        save_splits(args.out, splits, meta)
        write_json(args.metrics, {**{f"{name}_size": len(split)
                                     for name, split in splits.items()},
                                  "mlflow_run_id": run.run_id})
        run.log_params({"mean": meta.mean, "std": meta.std,
                        **{f"{name}_size": len(split) for name, split in splits.items()}})
        run.log_dict({name: dict(zip(meta.classes, counts, strict=True))
                      for name, counts in meta.counts.items()}, "class_counts.json")
        run.log_figure(sample_grid(splits["train"], meta.classes), "samples.png")
        sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
        print(f"{spec.name}: {sizes}; mean {meta.mean}, std {meta.std}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
