"""Export a Keras classifier to a TFLite (LiteRT) flatbuffer for serving."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import tensorflow as tf


def to_tflite(model: keras.Model, path: str | Path) -> Path:
    """Write ``model`` as float32 TFLite (dynamic batch dimension) through a SavedModel; returns the path."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        path.write_bytes(converter.convert())
    return path
