"""How the model does in one clinic: its analyses with a confirmed diagnosis, measured as the model card measures
the HAM10000 test part, beside the card's figure for each measure.

`measure` is plain counting over (confirmed class, most likely class, triage tier, malignant probability) rows,
each rate a proportion with its count and 95% Wilson interval (ml.serve.stats, as the card's triage figures have them);
`card_figures` reads the same measures from the shipped model card (metrics.json, its test part);
`drift_warnings` says where the clinic's malignant sensitivity lies wholly below the card's. A diagnosis outside
the 7 classes ("other") is counted but left out of the figures: the model has no class for it.
"""

import math
from dataclasses import dataclass
from datetime import date

from django.db.models import Count, QuerySet

from analysis.classes import CLASS_CODES, CLASS_NAMES, MALIGNANT
from analysis.forms import within_days
from analysis.models import Analysis, Outcome
from analysis.reports import card_of, shipped_card
from ml.serve.stats import proportion

URGENT, UNCERTAIN, ROUTINE = Analysis.RiskTier.URGENT, Analysis.RiskTier.UNCERTAIN, Analysis.RiskTier.ROUTINE
# Reliability diagram: the malignant probability in ten equal bins.
BINS = 10

# The measures compared with the card, in the order the page shows them: (key, words).
RATES = [
    ("urgent_sensitivity", "Malignant lesions the urgent tier caught (sensitivity)"),
    ("urgent_specificity", "Benign lesions kept out of the urgent tier (specificity)"),
    ("urgent_or_uncertain_sensitivity", "Malignant lesions urgent or uncertain caught (sensitivity)"),
    ("urgent_or_uncertain_specificity", "Benign lesions left routine (specificity of urgent or uncertain)"),
    ("melanoma_recall", "Melanomas whose most likely class was melanoma (melanoma recall)"),
    ("accuracy", "Most likely class right (accuracy)"),
    ("balanced_accuracy", "Mean of the per-class recalls (balanced accuracy)"),
]


@dataclass(frozen=True)
class Confirmed:
    """One analysis with a confirmed diagnosis in one of the 7 classes."""

    diagnosis: str
    predicted: str
    tier: str
    malignant_probability: float


def confirmed_rows(
    analyses: QuerySet, model_version: str | None = None, first: date | None = None, last: date | None = None
) -> tuple[list[Confirmed], int]:
    """The done analyses among `analyses` (already scoped to a clinic) whose latest confirmed diagnosis counts,
    of one model version (None: all), analysed from `first` to `last` (days in the current time zone); and how
    many were confirmed as a diagnosis outside the 7 classes."""
    done = within_days(analyses.filter(status=Analysis.Status.DONE), "created_at", first, last)
    if model_version is not None:
        done = done.filter(model_version=model_version)
    outcomes = Outcome.objects.current().filter(analysis__in=done.values("pk"))
    rows, other = [], 0
    for diagnosis, predicted, tier, p in outcomes.values_list(
        "diagnosis", "analysis__predicted_class", "analysis__risk_tier", "analysis__malignant_probability"
    ):
        if diagnosis == Outcome.OTHER:
            other += 1
        else:
            rows.append(Confirmed(diagnosis, predicted, tier, p))
    return rows, other


def measure(rows: list[Confirmed]) -> dict:
    """The clinic's figures: counts, every rate as ml.serve.stats.proportion, the confusion matrix (rows the confirmed
    class, columns the most likely one) and the reliability bins."""
    malignant = [r for r in rows if r.diagnosis in MALIGNANT]
    benign = [r for r in rows if r.diagnosis not in MALIGNANT]
    matrix = [[0] * len(CLASS_CODES) for _ in CLASS_CODES]
    for r in rows:
        matrix[CLASS_CODES.index(r.diagnosis)][CLASS_CODES.index(r.predicted)] += 1
    return {
        "n": len(rows),
        "malignant": len(malignant),
        "benign": len(benign),
        "urgent_sensitivity": proportion(sum(r.tier == URGENT for r in malignant), len(malignant)),
        "urgent_specificity": proportion(sum(r.tier != URGENT for r in benign), len(benign)),
        "urgent_or_uncertain_sensitivity": proportion(sum(r.tier != ROUTINE for r in malignant), len(malignant)),
        "urgent_or_uncertain_specificity": proportion(sum(r.tier == ROUTINE for r in benign), len(benign)),
        **matrix_figures(matrix),
        "reliability": reliability(rows),
    }


def matrix_figures(matrix: list[list[int]]) -> dict:
    """Accuracy, melanoma recall, per-class recall and balanced accuracy of a confusion matrix (rows true)."""
    n = sum(map(sum, matrix))
    recalls = {code: proportion(matrix[i][i], sum(matrix[i])) for i, code in enumerate(CLASS_CODES)}
    return {
        "confusion_matrix": matrix,
        "accuracy": proportion(sum(matrix[i][i] for i in range(len(matrix))), n),
        "melanoma_recall": recalls["mel"],
        "per_class_recall": recalls,
        "balanced_accuracy": balanced_accuracy(recalls),
    }


def balanced_accuracy(recalls: dict[str, dict]) -> dict:
    """The mean recall over the classes that occur, with an approximate 95% interval: the normal one of a mean
    of independent proportions, each taken with two hits and two misses added (Agresti and Coull), so a class
    whose few lesions were all found or all missed still counts as uncertain. No single Wilson interval exists
    for a mean of proportions; this one is for reading the figure, as the per-class intervals are."""
    present = [r for r in recalls.values() if r["n"]]
    if not present:
        return {"value": math.nan, "hits": 0, "n": 0, "classes": 0, "ci95": [math.nan, math.nan]}
    value = sum(r["hits"] / r["n"] for r in present) / len(present)
    variance = (
        sum(((r["hits"] + 2) / (r["n"] + 4)) * (1 - (r["hits"] + 2) / (r["n"] + 4)) / (r["n"] + 4) for r in present)
        / len(present) ** 2
    )
    half = 1.96 * math.sqrt(variance)
    return {
        "value": value,
        "hits": sum(r["hits"] for r in present),
        "n": sum(r["n"] for r in present),
        "classes": len(present),
        "ci95": [max(0.0, value - half), min(1.0, value + half)],
    }


def reliability(rows: list[Confirmed]) -> list[dict]:
    """For each tenth of the malignant probability: how many lesions, their mean probability, and how often the
    lesion was in fact malignant (with its interval). A well-calibrated model's points lie on the diagonal."""
    bins = [[] for _ in range(BINS)]
    for r in rows:
        bins[min(int(r.malignant_probability * BINS), BINS - 1)].append(r)
    out = []
    for i, members in enumerate(bins):
        hits = sum(r.diagnosis in MALIGNANT for r in members)
        mean = sum(r.malignant_probability for r in members) / len(members) if members else None
        out.append(
            {"low": i / BINS, "high": (i + 1) / BINS, "mean_probability": mean, **proportion(hits, len(members))}
        )
    return out


def card_figures(version: str | None) -> dict | None:
    """The same measures on the HAM10000 test part, from the shipped model card of `version`; None when the
    card is missing or of another version (its figures belong to one model)."""
    card = card_of(version) if version else None
    if card is None or "triage" not in card:
        return None
    test = card["triage"]["test"]
    figures = matrix_figures(card["test"]["confusion_matrix"])
    return {
        "model_version": version,
        "n": card["test"]["n"],
        "urgent_sensitivity": test["urgent"]["malignant_sensitivity"],
        "urgent_specificity": test["urgent"]["malignant_specificity"],
        "urgent_or_uncertain_sensitivity": test["urgent_or_uncertain"]["malignant_sensitivity"],
        "urgent_or_uncertain_specificity": test["urgent_or_uncertain"]["malignant_specificity"],
        "melanoma_recall": figures["melanoma_recall"],
        "accuracy": figures["accuracy"],
        # The card's own figure (the same mean of recalls), with the interval made as the clinic's is.
        "balanced_accuracy": figures["balanced_accuracy"] | {"value": card["test"]["balanced_accuracy"]},
        "per_class_recall": figures["per_class_recall"],
    }


SENSITIVITIES = {
    "urgent_sensitivity": "the urgent tier",
    "urgent_or_uncertain_sensitivity": "urgent or uncertain together",
}


def drift_warnings(clinic: dict, card: dict | None) -> list[dict]:
    """Each malignant sensitivity of the clinic that is below the card's and whose whole 95% interval lies below
    the card's figure: the model misses more cancers here than its card says, beyond what chance explains."""
    if card is None:
        return []
    warnings = []
    for key, words in SENSITIVITIES.items():
        mine, theirs = clinic[key], card[key]
        if mine["n"] and mine["ci95"][1] < theirs["value"]:
            warnings.append({"key": key, "words": words, "clinic": mine, "card": theirs})
    return warnings


def clinic_performance(
    analyses: QuerySet, model_version: str | None, first: date | None = None, last: date | None = None
) -> dict:
    """Everything the page and the API answer: the clinic's figures, the card's, the warnings, and the rows
    of the comparison table."""
    rows, other = confirmed_rows(analyses, model_version, first, last)
    figures = measure(rows)
    card = card_figures(model_version)
    return {
        "model_version": model_version,
        "first": first,
        "last": last,
        "other": other,
        "clinic": figures,
        "card": card,
        "warnings": drift_warnings(figures, card) if rows else [],
        "rates": [
            {"key": key, "words": words, "clinic": figures[key], "card": card[key] if card else None}
            for key, words in RATES
        ],
        "classes": [(code, CLASS_NAMES[code], code in MALIGNANT) for code in CLASS_CODES],
    }


def versions_confirmed(analyses: QuerySet) -> list[str]:
    """The model versions of the done analyses among `analyses` that have a confirmed diagnosis, most such
    analyses first."""
    counts = (
        analyses.filter(status=Analysis.Status.DONE, outcomes__isnull=False)
        .order_by()
        .values_list("model_version")
        .annotate(count=Count("pk", distinct=True))
    )
    return [version for version, _ in sorted(counts, key=lambda row: (-row[1], row[0]))]


def default_version(versions: list[str]) -> str:
    """The shipped model's version where its analyses have confirmed diagnoses (its card is the one to compare
    with), else the version with the most of them, else the shipped one."""
    shipped = (shipped_card() or {}).get("model_version", "")
    return shipped if shipped in versions or not versions else versions[0]


def reliability_plot(bins: list[dict], size: int = 300, margin: int = 40) -> dict:
    """The reliability diagram's geometry in SVG user units, for the template to draw: each non-empty bin as a
    point (mean probability across, share malignant up) with its interval as a vertical line."""
    span = size - 2 * margin

    def x(p: float) -> float:
        return round(margin + p * span, 1)

    def y(p: float) -> float:
        return round(size - margin - p * span, 1)

    points = [
        {
            "cx": x(b["mean_probability"]),
            "cy": y(b["value"]),
            "y_low": y(b["ci95"][0]),
            "y_high": y(b["ci95"][1]),
            "title": f"{b['low']:.0%}–{b['high']:.0%}: {b['hits']} of {b['n']} malignant, mean probability "
            f"{b['mean_probability']:.0%}",
        }
        for b in bins
        if b["n"]
    ]
    ticks = [{"value": f"{t / 4:.0%}", "x": x(t / 4), "y": y(t / 4)} for t in range(5)]
    return {
        "size": size,
        "points": points,
        "ticks": ticks,
        "left": margin,
        "right": size - margin,
        "top": margin,
        "bottom": size - margin,
        "label_x": size / 2,
        "label_y": size - 6,
    }
