"""Writing a Keras classifier for serving: its TFLite (LiteRT) flatbuffer, and half-precision storage.

Half precision halves the shipped files (a three-network ensemble is 32 MB in float32) at no cost in speed:
the weights are stored as float16 and computed in float32. :func:`round_to_half` makes the Keras model hold
exactly those float16 values, so the Keras file (Grad-CAM, further training) and a float16 TFLite file are the
same model; they still differ by a few 1e-4 in probability, because the converter folds each frozen batch norm
into its convolution before rounding, where the Keras model rounds the two apart. An int8 TFLite file
(:func:`to_int8_tflite`, what the shipped model serves) is further off: the same answer on about 96% of val.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from .model import COLOUR_CONSTANCY_LAYER


def round_to_half(model: keras.Model) -> None:
    """Round every weight of ``model`` to the nearest float16 value (kept as float32), in place.

    Raises ValueError, changing nothing, where a weight lies beyond float16's range (65504)."""
    weights = [np.asarray(w) for w in model.get_weights()]
    limit = float(np.finfo(np.float16).max)
    for variable, w in zip(model.weights, weights, strict=True):
        if w.size and np.abs(w).max() > limit:
            raise ValueError(f"{variable.path} holds {np.abs(w).max():.3g}, beyond float16's range: keep float32")
    model.set_weights([w.astype(np.float16).astype(np.float32) for w in weights])


def deflate(path: str | Path) -> Path:
    """Rewrite a zip file (a ``.keras`` file is one) with every member compressed: float16-rounded float32
    weights have 13 zero bits each, which Keras's own uncompressed zip keeps."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as dst:
        for info in src.infolist():
            packed = zipfile.ZipInfo(info.filename, info.date_time)
            packed.compress_type = zipfile.ZIP_DEFLATED
            with src.open(info) as member, dst.open(packed, "w") as out:
                shutil.copyfileobj(member, out, 1 << 20)
    tmp.replace(path)
    return path


@contextmanager
def converter_of(model: keras.Model):
    """A TFLite converter over ``model`` exported as a SavedModel (dynamic batch dimension), for the block."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        yield tf.lite.TFLiteConverter.from_saved_model(tmp)


def to_tflite(model: keras.Model, path: str | Path, half: bool = False) -> Path:
    """Write ``model`` as TFLite (dynamic batch dimension) through a SavedModel; returns the path.

    ``half``: weights stored as float16 (dequantised to float32 when the interpreter loads them)."""
    import tensorflow as tf

    path = Path(path)
    with converter_of(model) as converter:
        if half:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        path.write_bytes(converter.convert())
    return path


# Left in float by :func:`to_int8_tflite`: the members' dense layers and the softmax hold few multiply-adds, and
# an 8-bit softmax could only say probabilities in steps of 1/256.
FLOAT_OPS = ("FULLY_CONNECTED", "SOFTMAX")


# Layers whose every op :func:`to_int8_tflite` leaves in float: the colour-constancy layer (ml.model.ShadesOfGray)
# raises pixels to the 6th power, averages and divides by the result, which 8 bits per tensor cannot hold (a
# dark channel's mean rounds to 0, and the division fails); it costs a few element-wise ops on the input.
FLOAT_LAYERS = (COLOUR_CONSTANCY_LAYER,)


def float_layer_nodes(model: keras.Model, converter) -> list[str]:
    """The TFLite node names of the ops of ``model``'s :data:`FLOAT_LAYERS`, read off a float conversion by
    ``converter`` (one over ``model``, before it is told to quantise)."""
    if not any(layer.name in FLOAT_LAYERS for layer in model.layers):
        return []
    import tensorflow as tf

    names = [detail["name"] for detail in tf.lite.Interpreter(model_content=converter.convert()).get_tensor_details()]
    return [name for name in names if any(f"/{layer}" in name for layer in FLOAT_LAYERS)]


def to_int8_tflite(model: keras.Model, path: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Write ``model`` as TFLite with its convolutions in 8-bit integers (weights per channel, activations per
    tensor, their ranges measured on the ``calibration`` arrays, each (h, w, 3) and preprocessed); input,
    dense layers, softmax and output stay float32. Returns the path.

    The same model and calibration arrays give the same file: the ranges are measured on the convolutions,
    which an operating point folded into the last (float) layer does not touch. A model saved with
    ``int8`` in its recipe is served so (``ml.train.save``); ``python -m ml.quantize`` compares the two kinds."""
    import tensorflow as tf

    arrays = [np.asarray(a, dtype=np.float32)[None] for a in calibration]
    if not arrays:
        raise ValueError("int8 quantisation needs calibration images")

    def samples():
        for a in arrays:
            yield [a]

    path = Path(path)
    with converter_of(model) as converter:
        float_nodes = float_layer_nodes(model, converter)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        # The quantisation debugger is TensorFlow's way to leave chosen op types, and chosen nodes, in float.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=samples,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(FLOAT_OPS), denylisted_nodes=float_nodes or None
            ),
        )
        path.write_bytes(debugger.get_nondebug_quantized_model())
    return path
