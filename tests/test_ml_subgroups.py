"""The model card's figures by patient and lesion: the metadata each image carries into the dataset, the groups
ml.evaluate forms from it, the card's section and the limits line naming the weakest groups."""

import json

import numpy as np
import pandas as pd
import pytest

from ml.serve import paths
from ml.serve.labels import CLASSES, age_band
from ml.study import subgroups
from ml.train import data

from .cards import group
from .test_ml_pipeline import synthetic_ham


@pytest.fixture
def described(tmp_path):
    """The synthetic folder with metadata that differs from image to image (and a missing age)."""
    root = synthetic_ham(tmp_path / "ham", per_part=(1, 1, 2))
    metadata = pd.read_csv(root / "HAM10000_metadata.csv")
    n = len(metadata)
    metadata["dx_type"] = np.where(metadata["dx"] == "nv", "follow_up", "histo")
    metadata["age"] = [np.nan if i == 0 else 10 * (i % 9) for i in range(n)]
    metadata["sex"] = ["female" if i % 2 else "male" for i in range(n)]
    metadata["localization"] = [("face", "back", "trunk")[i % 3] for i in range(n)]
    metadata = metadata.iloc[::-1]  # another order than split.csv's: rows are matched by image, not by position
    metadata.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root, metadata.set_index("image_id")


def test_every_image_carries_its_own_metadata(described):
    root, metadata = described
    frame = data.load_dataset(root)
    assert len(frame) == len(metadata)
    for column in data.DESCRIPTIONS:
        expected = metadata.loc[frame["image_id"], column].to_numpy()
        assert list(frame[column].astype(str)) == list(pd.Series(expected).astype(str))  # NaN as "nan" on both sides


def test_without_metadata_the_split_still_loads_and_the_card_has_no_section(described):
    root, _ = described
    (root / "HAM10000_metadata.csv").unlink()
    frame = data.load_dataset(root)
    assert not set(data.DESCRIPTIONS) & set(frame.columns)
    test = data.part(frame, "test")
    probs = np.eye(len(CLASSES))[test["label"]]
    assert subgroups.subgroups(test, test["label"].to_numpy(), probs) == {}
    assert subgroups.subgroup_lines({}) == [] and subgroups.weakest_groups_line({}) == []
    (root / "split.csv").unlink()
    with pytest.raises(FileNotFoundError, match="neither split.csv nor HAM10000_metadata.csv"):
        data.load_dataset(root)


def test_the_groups_cover_every_test_image_in_the_cards_words(described):
    root, metadata = described
    test = data.part(data.load_dataset(root), "test")
    y = test["label"].to_numpy()
    probs = np.eye(len(CLASSES))[y]
    groups = subgroups.subgroups(test, y, probs)
    assert list(groups) == [key for key, _, _ in subgroups.GROUPINGS]
    for rows in groups.values():
        assert sum(r["images"] for r in rows) == len(test)
        assert all(r["accuracy"] == 1.0 for r in rows)  # the probabilities are the truth
    confirmed = {r["group"]: r["images"] for r in groups["confirmed_by"]}
    assert confirmed == {
        "histopathology": int(np.sum(test["dx"] != "nv")),
        "follow-up": int(np.sum(test["dx"] == "nv")),
    }
    bands = [age_band(a) for a in test["age"]]
    ages = [r["group"] for r in groups["age"]]
    assert ages == [b for b in ("under 30", "30-49", "50-69", "70 and over", "unknown") if b in bands]
    assert {r["group"]: r["images"] for r in groups["age"]} == {b: bands.count(b) for b in set(bands)}


@pytest.mark.parametrize(
    ("age", "band"),
    [(0, "under 30"), (29, "under 30"), (30, "30-49"), (69, "50-69"), (70, "70 and over"), (np.nan, "unknown")],
)
def test_age_bands(age, band):
    assert age_band(age) == band


def test_the_limits_name_the_lowest_melanoma_recall_among_groups_with_enough_melanomas():
    groups = {
        "confirmed_by": [group("histopathology", 40, 30)],
        "sex": [group("male", 20, 8), group("unknown", 12, 1)],  # unknown is not a group to name
        "age": [group("30-49", 9, 0)],  # too few melanomas to name
        "body_site": [group("face", 10, 5), group("back", 30, 27)],
    }
    (line,) = subgroups.weakest_groups_line(groups)
    assert "male (sex), 0.400 (8/20, 0.22-0.61); face (body site), 0.500 (5/10, 0.24-0.76); histopathology (how" in line
    assert "back" not in line and "30-49" not in line and "unknown" not in line
    section = "\n".join(subgroups.subgroup_lines(groups))
    assert "| male | 100 | 0.800 | 0.400 (8/20, 0.22-0.61) | — | 0.400 (8/20, 0.22-0.61) |" in section
    assert "| 30-49 | 100 | 0.800 | 0.000 (0/9, 0.00-0.30) |" in section
    assert "| unknown | 100 | 0.800 | 0.083 (1/12, 0.01-0.35) |" in section
    assert "| nobody | 100 | 0.800 | — | — | — |" in subgroups.subgroup_lines(
        {**groups, "sex": [group("nobody", 0, 0)]}
    )


def test_the_shipped_cards_groups_add_up_to_its_test_figures():
    metrics = json.loads((paths.MODELS_DIR / "metrics.json").read_text())
    test = metrics["test"]
    melanomas = test["per_class"]["mel"]["support"]
    assert set(metrics["subgroups"]) == {key for key, _, _ in subgroups.GROUPINGS}
    for rows in metrics["subgroups"].values():
        assert sum(r["images"] for r in rows) == test["n"]
        assert sum(r["melanoma_recall"]["n"] for r in rows) == melanomas
        assert sum(r["melanoma_recall"]["hits"] for r in rows) == round(test["melanoma_recall"] * melanomas)
        assert sum(r["accuracy"] * r["images"] for r in rows) == pytest.approx(test["accuracy"] * test["n"])
