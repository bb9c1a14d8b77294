"""The 7 HAM10000 diagnosis classes: codes, names and which are malignant.

One definition for the whole project lives in ml/serve/labels.py (plain Python, no TensorFlow): the order of
CLASS_CODES is the order of the model's output vector.
"""

from ml.serve.labels import CLASSES as CLASS_CODES
from ml.serve.labels import FULL_NAMES as CLASS_NAMES
from ml.serve.labels import MALIGNANT

__all__ = ["CLASS_CODES", "CLASS_NAMES", "MALIGNANT", "is_malignant"]


def is_malignant(code: str) -> bool:
    if code not in CLASS_NAMES:
        raise ValueError(f"unknown class code {code!r}")
    return code in MALIGNANT
