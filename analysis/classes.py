"""The 7 HAM10000 diagnosis classes: codes, names and which are malignant.

Plain Python, no Django, so `ml/` and the workers share it with the web app.
The order of CLASS_CODES is the order of the model's output vector.
"""

CLASS_CODES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

MALIGNANT: frozenset[str] = frozenset({"mel", "bcc", "akiec"})


def is_malignant(code: str) -> bool:
    if code not in CLASS_NAMES:
        raise ValueError(f"unknown class code {code!r}")
    return code in MALIGNANT
