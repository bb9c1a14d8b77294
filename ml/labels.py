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
