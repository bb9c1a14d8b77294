"""The seven HAM10000 diagnostic classes, in the order the model outputs them."""

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

FULL_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

MALIGNANT: frozenset[str] = frozenset({"mel", "bcc", "akiec"})

MALIGNANT_INDICES: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if c in MALIGNANT)

# Age bands of the model card's figures by patient (ml.evaluate) and of the report's figures for a patient like
# the one in hand (analysis.reports): under 30, 30-49, 50-69, 70 and over.
AGE_BANDS: tuple[str, ...] = ("under 30", "30-49", "50-69", "70 and over")
AGE_BAND_STARTS: tuple[int, ...] = (30, 50, 70)


def age_band(age: float | None) -> str:
    """The band of an age in years; "unknown" for a missing one (None or NaN)."""
    if age is None or age != age:
        return "unknown"
    return AGE_BANDS[sum(age >= start for start in AGE_BAND_STARTS)]
