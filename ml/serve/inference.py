"""How an image becomes 7 probabilities in the service: a LiteRT interpreter over the shipped TFLite file.

A worker process creates one :class:`Classifier` (``get_classifier()``) and reuses it for every task; the
interpreter is light (no TensorFlow import) and fast at batch 1 on a CPU.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.serve.labels import CLASSES, MALIGNANT
from ml.serve.preprocess import ImageSource, preprocess

# Test-time augmentation. A dermoscopic image has no up, down, left or right, so a model may also be shown mirror
# images of it; the views' log-probabilities are averaged (the mean of their logits, up to a constant). The views
# a model is served with are recorded in its JSON (``views``; default: the original only), and its operating point
# is chosen on val over them. Each view is one more pass through the network: on val, four views raised the
# ensemble's macro AUC from 0.947 to 0.954, but even two broke the 15 ms budget on the project's CPU, so the
# shipped model looks at the original only. With the int8 file (4 ms on an AVX-512 machine) two views would fit
# there, but on val they did not pay: the shipped networks over mirrored views too ranked val a little better
# (raw macro AUC 0.953 against 0.950) and their point did worse on held-out halves (accuracy + balanced
# accuracy 1.485 against 1.493; ml/models/val_comparison.json).
VIEWS = {
    "original": lambda batch: batch,
    "mirrored": lambda batch: batch[:, :, ::-1],
    "upside_down": lambda batch: batch[:, ::-1],
    "rotated_180": lambda batch: batch[:, ::-1, ::-1],
}


ORIGINAL_ONLY = ("original",)


def served_views(meta: dict) -> tuple[str, ...]:
    """The test-time views a model's JSON asks for (older models name none: the original only)."""
    return tuple(meta.get("views", ORIGINAL_ONLY))


def predict_views(predict, batch: np.ndarray, views) -> np.ndarray:
    """(n, 7) probabilities for (n, h, w, 3) arrays: the softmax of the mean, over ``views``, of the log of
    ``predict`` (arrays -> probabilities) on each view. All views go through ``predict`` as one batch."""
    if tuple(views) == ORIGINAL_ONLY:
        return predict(batch)
    stacked = np.ascontiguousarray(np.concatenate([VIEWS[v](batch) for v in views]), dtype=np.float32)
    logs = np.log(np.clip(predict(stacked), 1e-12, None)).reshape(len(views), len(batch), -1).mean(axis=0)
    return softmax(logs)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, classes) logits."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    probabilities: dict[str, float]
    predicted_class: str
    confidence: float
    malignant: bool
    model_version: str


def model_metadata(model_path: str | Path) -> dict:
    """The JSON written beside a model by ``ml.train`` (version, classes, input size, calibration)."""
    meta_file = Path(model_path).with_suffix(".json")
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file} is missing: a model must ship with its metadata")
    return json.loads(meta_file.read_text())


def sha256(path: str | Path) -> str:
    """A file's digest, as the model's JSON records it for each of its files (``files``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class LiteModel:
    """A LiteRT interpreter over one TFLite file: (n, h, w, 3) arrays -> (n, 7) probabilities, batch size as given.

    A file with more outputs (the worker's companion, ``ml.train.export.write_explainer``) gives them all through
    :meth:`outputs`, in the order of the Keras model's outputs (its signature's ``output_0``, ``output_1``, ...);
    the probabilities come first. Knows nothing of the model's JSON: :class:`Classifier` adds that, and
    ``ml.train.calibrate`` uses this alone on a file it has just written."""

    def __init__(self, model_path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        threads = num_threads or int(os.environ.get("SKINSITE_INFERENCE_THREADS", 0)) or os.cpu_count() or 1
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._outputs = output_indices(self._interpreter)
        by_index = {d["index"]: d for d in self._interpreter.get_tensor_details()}
        # An 8-bit output (an int8 file's activations, ml.train.export.with_outputs) is given back as its float values.
        self._scales = [
            by_index[i]["quantization"] if by_index[i]["dtype"] != np.float32 else None for i in self._outputs
        ]
        self._batch = None
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the file for (n, h, w, 3) arrays, in the model's order, as float32 copies."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if self._batch != len(batch):
                self._interpreter.resize_tensor_input(self._input, batch.shape)
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            raw = [self._interpreter.get_tensor(i) for i in self._outputs]
        return [
            out.copy() if scale is None else (out.astype(np.float32) - scale[1]) * np.float32(scale[0])
            for out, scale in zip(raw, self._scales, strict=True)
        ]

    def quantised_outputs(self) -> list[bool]:
        """Which outputs the file gives in 8 bits (and :meth:`outputs` as their float values)."""
        return [scale is not None for scale in self._scales]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs_in_batches(self, arrays: np.ndarray, size: int = 32) -> list[np.ndarray]:
        """:meth:`outputs` for many arrays, ``size`` at a time (the interpreter's memory grows with the batch)."""
        parts = [self.outputs(arrays[s : s + size]) for s in range(0, len(arrays), size)]
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def in_batches(self, arrays: np.ndarray, size: int = 32) -> np.ndarray:
        """Probabilities for many arrays, ``size`` at a time."""
        if len(arrays) == 0:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        return np.concatenate([self(arrays[s : s + size]) for s in range(0, len(arrays), size)])


def output_indices(interpreter) -> list[int]:
    """The tensor indices of an interpreter's outputs in the exported model's order: the signature names them
    ``output_0``, ``output_1``, ... (the flatbuffer's own output list need not keep that order)."""
    signatures = interpreter.get_signature_list()
    if not signatures:
        return [d["index"] for d in interpreter.get_output_details()]
    details = interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
    if len(details) == 1:
        return [d["index"] for d in details.values()]

    def position(name: str) -> int:
        prefix, _, number = name.rpartition("_")
        if prefix != "output" or not number.isdigit():
            raise ValueError(f"unexpected output name {name!r}: cannot tell the outputs' order")
        return int(number)

    return [details[name]["index"] for name in sorted(details, key=position)]


def prediction_of(probs: np.ndarray, version: str) -> Prediction:
    """A :class:`Prediction` of 7 probabilities (renormalised in float64)."""
    probs = np.asarray(probs, np.float64) / np.sum(probs)
    best = int(np.argmax(probs))
    return Prediction(
        probabilities={c: float(p) for c, p in zip(CLASSES, probs)},
        predicted_class=CLASSES[best],
        confidence=float(probs[best]),
        malignant=CLASSES[best] in MALIGNANT,
        model_version=version,
    )


class Classifier:
    def __init__(self, model_path: str | Path | None = None, num_threads: int | None = None):
        self.model_path = Path(model_path or paths.SHIPPED_MODEL)
        meta = model_metadata(self.model_path)
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{self.model_path}: classes {meta['classes']} differ from {CLASSES}")
        self.version: str = meta["version"]
        self.input_size: tuple[int, int] = tuple(meta["input_size"])
        self.views: tuple[str, ...] = served_views(meta)
        if unknown := set(self.views) - set(VIEWS):
            raise ValueError(f"{self.model_path}: unknown test-time views {sorted(unknown)}")
        self._invoke = LiteModel(self.model_path, num_threads)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) preprocessed arrays -> (n, 7) probabilities (over the model's test-time views)."""
        return predict_views(self._invoke, batch, self.views)  # LiteModel makes it contiguous float32

    def predict(self, source: ImageSource) -> Prediction:
        probs = self.predict_arrays(preprocess(source, self.input_size)[None])[0]
        return self.to_prediction(probs)

    def to_prediction(self, probs: np.ndarray) -> Prediction:
        return prediction_of(probs, self.version)


@functools.cache
def get_classifier() -> Classifier:
    """The process's classifier, loaded on first use and kept."""
    return Classifier()
