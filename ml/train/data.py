"""Reading a HAM10000 folder: images, metadata and the lesion-grouped train/val/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ml.serve.labels import CLASSES


def make_split(metadata: pd.DataFrame, seed: int = 0, val: float = 0.1, test: float = 0.2) -> pd.DataFrame:
    """Split by lesion (no lesion on two sides), stratified by class, seeded.

    Used only where a folder has no ``split.csv``; the project's own data ships a fixed one.
    """
    rng = np.random.default_rng(seed)
    lesions = metadata.groupby("lesion_id")["dx"].first()
    parts = {}
    for _, group in lesions.groupby(lesions):
        ids = group.index.to_numpy().copy()
        rng.shuffle(ids)
        n_test, n_val = round(len(ids) * test), round(len(ids) * val)
        parts.update({i: "test" for i in ids[:n_test]})
        parts.update({i: "val" for i in ids[n_test : n_test + n_val]})
        parts.update({i: "train" for i in ids[n_test + n_val :]})
    out = metadata[["image_id", "lesion_id", "dx"]].copy()
    out["split"] = out["lesion_id"].map(parts)
    return out


# What HAM10000's metadata says of each image besides its diagnosis: how that diagnosis was confirmed (histo,
# follow_up, consensus, confocal), the patient's age and sex, and the body site.
DESCRIPTIONS = ("dx_type", "age", "sex", "localization")


def load_dataset(data_dir: str | Path) -> pd.DataFrame:
    """One row per image: image_id, lesion_id, dx, label (index into CLASSES), split, path, and the metadata's
    DESCRIPTIONS of it where the folder has ``HAM10000_metadata.csv``."""
    data_dir = Path(data_dir)
    split_file, metadata_file = data_dir / "split.csv", data_dir / "HAM10000_metadata.csv"
    metadata = pd.read_csv(metadata_file) if metadata_file.exists() else None
    if split_file.exists():
        frame = pd.read_csv(split_file)
    elif metadata is not None:
        frame = make_split(metadata)
    else:
        raise FileNotFoundError(f"{data_dir} has neither split.csv nor HAM10000_metadata.csv")
    if metadata is not None:
        present = [c for c in DESCRIPTIONS if c in metadata.columns]
        frame = frame.merge(metadata[["image_id", *present]], on="image_id", how="left", validate="one_to_one")
    unknown = set(frame["dx"]) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes in {data_dir}: {sorted(unknown)}")
    frame["label"] = frame["dx"].map(CLASSES.index).astype(int)
    frame["path"] = [str(data_dir / "images" / f"{i}.jpg") for i in frame["image_id"]]
    return frame.sort_values("image_id").reset_index(drop=True)


def part(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["split"] == name].reset_index(drop=True)


def calibration_paths(frame: pd.DataFrame, count: int = 200, seed: int = 0) -> list[str]:
    """``count`` train images drawn at random (seeded): the activation ranges of an int8 export are measured on
    them (``ml.train.export.to_int8_tflite``). Train only, so val still judges the quantised file."""
    train = part(frame, "train")
    rng = np.random.default_rng(seed)
    return list(train["path"].to_numpy()[rng.choice(len(train), min(count, len(train)), replace=False)])


EXTRA_COLUMNS = ("image_id", "lesion_id", "dx")


def load_extra(extra_dir: str | Path) -> pd.DataFrame:
    """A folder of extra training images in the ``isic_archive`` layout (``metadata.csv`` with image_id,
    lesion_id, dx and optionally age, sex, localization; ``images/<image_id>.jpg``), as rows of the shape
    :func:`load_dataset` gives, every one of them in the train part and its ``source`` the folder's name.
    Raises ``FileNotFoundError`` for a folder without ``metadata.csv`` or with an image missing, and
    ``ValueError`` for missing columns or an unknown class."""
    extra_dir = Path(extra_dir)
    metadata_file = extra_dir / "metadata.csv"
    if not metadata_file.is_file():
        raise FileNotFoundError(
            f"{extra_dir} has no metadata.csv: an extra training folder needs metadata.csv "
            f"({', '.join(EXTRA_COLUMNS)}) and images/<image_id>.jpg"
        )
    frame = pd.read_csv(metadata_file)
    absent = [c for c in EXTRA_COLUMNS if c not in frame.columns]
    if absent:
        raise ValueError(f"{metadata_file} lacks the columns {absent}")
    unknown = set(frame["dx"]) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes in {metadata_file}: {sorted(unknown)}")
    frame = frame[[*EXTRA_COLUMNS, *(c for c in DESCRIPTIONS if c in frame.columns)]].copy()
    frame["split"] = "train"
    frame["label"] = frame["dx"].map(CLASSES.index).astype(int)
    frame["path"] = [str(extra_dir / "images" / f"{i}.jpg") for i in frame["image_id"]]
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {metadata_file} are missing, e.g. {missing[0]}")
    frame["source"] = extra_dir.name
    return frame


def with_extra(frame: pd.DataFrame, extra_dirs) -> pd.DataFrame:
    """``frame`` (from :func:`load_dataset`) with each extra folder's images added to the train part only.
    Val and test stay the dataset's own. An extra image whose id or lesion is already in ``frame`` (or in an
    earlier extra folder) is refused: it could carry a val or test lesion into training."""
    frame = frame.assign(source=frame.get("source", "ham10000"))
    for extra_dir in extra_dirs:
        extra = load_extra(extra_dir)
        for key in ("image_id", "lesion_id"):
            shared = set(extra[key]) & set(frame[key])
            if shared:
                raise ValueError(f"{extra_dir} shares {len(shared)} {key}s with the data, e.g. {sorted(shared)[0]}")
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame
