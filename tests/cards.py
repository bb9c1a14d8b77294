"""Hand-made rows of the model card's metrics.json, for tests of what reads them (no Django, no TensorFlow)."""

from ml.train.metrics import proportion


def group(name, melanomas, found, images=100, accuracy=0.8):
    """A hand-made row of ml.train.metrics.by_group (its malignant lesions are its melanomas)."""
    return {
        "group": name,
        "images": images,
        "accuracy": accuracy,
        "melanoma_recall": proportion(found, melanomas),
        "malignant_sensitivity": proportion(found, melanomas),
        "melanoma_auc": None,
    }
