"""Reference rows for the model card's table: ``python -m ml.study.baselines``.

Measured on the test part with our own code: always answering nv, an SVM on frozen MobileNetV2 features,
and a small CNN trained from scratch on a small budget. (The paper's own MobileNetV2 recipe is
``python -m ml.train --recipe paper``, evaluated by ``ml.evaluate``.) Writes ``ml/models/baselines.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.labels import CLASSES  # noqa: E402
from ml.serve.preprocess import HAM_SCALE, preprocess  # noqa: E402
from ml.train import data, features  # noqa: E402
from ml.train.metrics import softmax, summary  # noqa: E402
from ml.train.model import build_classifier, split_model  # noqa: E402

log = logging.getLogger("ml.study.baselines")
CUT = "block_9_add"  # measured at HAM_SCALE: fixed reference rows, whatever input the served model takes


def always_nv(y_test: np.ndarray) -> dict:
    probs = np.zeros((len(y_test), len(CLASSES)))
    probs[:, CLASSES.index("nv")] = 1.0
    return summary(y_test, probs)


def frozen_features(frame, weights: Path, cache_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Global-average-pooled MobileNetV2 features (ImageNet weights, no fine-tuning) of the plain images."""
    model = build_classifier(weights, HAM_SCALE)
    lower = split_model(model, CUT)[0]
    to_pool = split_model(model, CUT, until="pool")[1]
    lower_fn = tf.function(lambda x, training=False: lower(x, training=False))
    cache = cache_dir / features.cache_key(CUT, HAM_SCALE, seed)
    out = {}
    for part in ("train", "test"):
        acts = features.cached(lower_fn, frame, part, 0, seed, HAM_SCALE, cache)
        out[part] = np.concatenate(
            [
                to_pool(np.asarray(acts[i : i + 256], np.float32), training=False).numpy()
                for i in range(0, len(acts), 256)
            ]
        )
    return out


def svm(frame, weights: Path, cache_dir: Path) -> dict:
    feats = frozen_features(frame, weights, cache_dir)
    scaler = StandardScaler().fit(feats["train"])
    clf = SVC(kernel="rbf", C=1.0, decision_function_shape="ovr")
    clf.fit(scaler.transform(feats["train"]), data.part(frame, "train")["label"])
    scores = clf.decision_function(scaler.transform(feats["test"]))
    # SVM margins are no probabilities: the softmax only orders them (AUC); ECE is not meaningful here.
    return summary(data.part(frame, "test")["label"].to_numpy(), softmax(scores))


def basic_cnn(frame, epochs: int = 10, size: tuple[int, int] = (56, 75), seed: int = 0) -> dict:
    keras.utils.set_random_seed(seed)

    def load(part):
        rows = data.part(frame, part)
        return np.stack([preprocess(p, size) for p in rows["path"]]), rows["label"].to_numpy()

    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    model = keras.Sequential(
        [
            keras.Input((*size, 3)),
            layers.RandomFlip("horizontal_and_vertical", seed=seed),
            *[
                block
                for filters in (16, 32, 64)
                for block in (
                    layers.Conv2D(filters, 3, padding="same", activation="relu"),
                    layers.Conv2D(filters, 3, padding="same", activation="relu"),
                    layers.MaxPooling2D(),
                )
            ],
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.3),
            layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
    return summary(y_test, model.predict(x_test, verbose=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--weights", type=Path, default=paths.IMAGENET_WEIGHTS)
    parser.add_argument("--cache-dir", type=Path, default=paths.CACHE_DIR)
    parser.add_argument("--out", type=Path, default=paths.MODELS_DIR / "baselines.json")
    parser.add_argument("--cnn-epochs", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    frame = data.load_dataset(args.data_dir)
    y_test = data.part(frame, "test")["label"].to_numpy()
    rows = {}
    for name, run in (
        ("always_nv", lambda: always_nv(y_test)),
        ("svm_frozen_features", lambda: svm(frame, args.weights, args.cache_dir)),
        ("basic_cnn", lambda: basic_cnn(frame, args.cnn_epochs)),
    ):
        started = time.time()
        rows[name] = {**run(), "seconds": round(time.time() - started, 1)}
        log.info(
            "%s: accuracy %.3f, balanced accuracy %.3f",
            name,
            rows[name]["accuracy"],
            rows[name]["balanced_accuracy"],
        )
    args.out.write_text(json.dumps(rows, indent=2))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
