"""How the model does for groups of test images (how the diagnosis was confirmed, sex, age, body site): the
figures ``ml.evaluate`` stores in metrics.json and the card's section on them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.serve.labels import AGE_BANDS, age_band
from ml.study.formats import fmt, rate_words
from ml.train import data
from ml.train.metrics import MIN_AUC_CASES, by_group

# The test images described by their metadata (ml.train.data.DESCRIPTIONS): (key in metrics.json, heading, the
# metadata's words for the groups -> the card's, in the card's order; None keeps the metadata's own, largest first).
GROUPINGS = (
    (
        "confirmed_by",
        "How the diagnosis was confirmed",
        {
            "histo": "histopathology",
            "follow_up": "follow-up",
            "consensus": "expert consensus",
            "confocal": "confocal microscopy",
        },
    ),
    ("sex", "Sex", None),
    ("age", "Age", {band: band for band in AGE_BANDS}),
    ("body_site", "Body site", None),
)
MIN_NAMED_MELANOMAS = 10  # the card's limits name the groups with the lowest melanoma recall among those with this many


def subgroups(rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray) -> dict[str, list[dict]]:
    """``by_group`` figures for each of GROUPINGS, from the metadata columns of ``rows`` (the images behind ``y``
    and ``probs``); empty where the data folder had no metadata."""
    if not set(data.DESCRIPTIONS) <= set(rows.columns):
        return {}
    columns = {
        "confirmed_by": rows["dx_type"],
        "sex": rows["sex"],
        "age": rows["age"].map(age_band),
        "body_site": rows["localization"],
    }
    out = {}
    for key, _, words in GROUPINGS:
        values = columns[key].fillna("unknown").astype(str).map(lambda v, w=words: (w or {}).get(v, v))
        order = [*words.values(), "unknown"] if words else None
        out[key] = by_group(y, probs, values.to_numpy(), order)
    return out


def _rate_or_dash(r: dict) -> str:
    return rate_words(r) if r["n"] else "—"


def subgroup_lines(groups: dict[str, list[dict]]) -> list[str]:
    """The card's section on how the served model does for different patients and lesions (test part)."""
    if not groups:
        return []
    lines = [
        "## By patient and lesion (test)",
        "",
        "The served decisions on the test images, grouped by what HAM10000's metadata says of them. Recall and "
        "sensitivity come with their count and 95% interval: a group of a few dozen melanomas pins them down only "
        "loosely. Melanoma AUC ranks "
        f"melanoma against every other lesion in the group, shown where it holds at least {MIN_AUC_CASES} of each. "
        "In HAM10000 every melanoma, basal cell carcinoma and actinic keratosis was confirmed by histopathology, and "
        "every lesion confirmed by follow-up is a nevus, so the histopathology rows are the hard cases.",
        "",
    ]
    for key, heading, _ in GROUPINGS:
        lines += [
            f"| {heading.lower()} | images | accuracy | melanoma recall | melanoma AUC | malignant sensitivity |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['group']} | {r['images']} | {fmt(r['accuracy'])} | {_rate_or_dash(r['melanoma_recall'])} "
                f"| {fmt(r['melanoma_auc'])} | {_rate_or_dash(r['malignant_sensitivity'])} |"
                for r in groups[key]
            ],
            "",
        ]
    return lines


def weakest_groups_line(groups: dict[str, list[dict]]) -> list[str]:
    """A limits bullet naming the groups with the lowest melanoma recall (among those with enough melanomas)."""
    named = [
        (r["melanoma_recall"]["value"], heading.lower(), r)
        for key, heading, _ in GROUPINGS
        for r in groups.get(key, [])
        if r["melanoma_recall"]["n"] >= MIN_NAMED_MELANOMAS and r["group"] != "unknown"
    ]
    if not named:
        return []
    worst = sorted(named, key=lambda t: t[0])[:3]
    words = "; ".join(f"{r['group']} ({heading}), {rate_words(r['melanoma_recall'])}" for _, heading, r in worst)
    return [
        f"- Lowest melanoma recall on test among groups with at least {MIN_NAMED_MELANOMAS} melanomas: {words} "
        "(see the section by patient and lesion)."
    ]
