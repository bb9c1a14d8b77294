"""Default locations of the data, the ImageNet weights and the shipped model.

Every path can be overridden on the command line or through the environment; the defaults point at
``../shared`` beside the repository, where the project's data lives on a developer's machine and in CI.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SKINSITE_SHARED", REPO.parent / "shared"))

DATA_DIR = Path(os.environ.get("SKINSITE_DATA_DIR", SHARED / "data" / "ham10000"))
IMAGENET_WEIGHTS = Path(
    os.environ.get(
        "SKINSITE_IMAGENET_WEIGHTS",
        SHARED / "data" / "imagenet" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    )
)
MODELS_DIR = REPO / "ml" / "models"
SHIPPED_MODEL = Path(os.environ.get("SKINSITE_MODEL", MODELS_DIR / "skinsite.tflite"))
CACHE_DIR = Path(os.environ.get("SKINSITE_ML_CACHE", REPO / "ml" / "cache"))
RUNS_DIR = REPO / "ml" / "runs"
