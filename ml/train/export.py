"""Writing a Keras classifier for serving: its TFLite (LiteRT) flatbuffer, and half-precision storage.

Half precision halves the shipped files (a three-network ensemble is 32 MB in float32) at no cost in speed:
the weights are stored as float16 and computed in float32. :func:`round_to_half` makes the Keras model hold
exactly those float16 values, so the Keras file (Grad-CAM, further training) and a float16 TFLite file are the
same model; they still differ by a few 1e-4 in probability, because the converter folds each frozen batch norm
into its convolution before rounding, where the Keras model rounds the two apart. An int8 TFLite file
(:func:`to_int8_tflite`, what the shipped model serves) is further off: the same answer on about 96% of val.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from ml.train.model import COLOUR_CONSTANCY_LAYER


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


# Layers whose every op :func:`to_int8_tflite` leaves in float: the colour-constancy layer (ml.train.model.ShadesOfGray)
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
    ``int8`` in its recipe is served so (``ml.train.fit.save``); ``python -m ml.train.quantize`` compares the two kinds."""
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


# --- the worker's companion file ------------------------------------------------------------------------------

EXPLAINER_SUFFIX = ".explain.tflite"
HEAD_SUFFIX = ".head.npz"
INT8_HEAD_TOLERANCE = 0.01


def companion_paths(served: str | Path) -> tuple[Path, Path]:
    """The companion TFLite file and the head weights beside a served ``<name>.tflite`` (see ``ml.serve.gradcam``)."""
    served = Path(served)
    return served.with_name(served.stem + EXPLAINER_SUFFIX), served.with_name(served.stem + HEAD_SUFFIX)


class NoActivationTensor(ValueError):
    """A network's last activations are not one tensor of the served file: the converter merged two identical
    networks (an ensemble holding one network twice) or renamed the op."""


def activation_tensors(model: keras.Model, served: str | Path) -> list[int]:
    """The indices, in the served TFLite file, of each network's last convolutional activations (``out_relu``),
    in member order: the converter names a tensor after its op's layer (``.../member0_out_relu_1/Relu6;...``)."""
    from ai_edge_litert.interpreter import Interpreter

    from ml.train.model import LAST_CONV_LAYER, member_layers

    details = Interpreter(model_path=str(served)).get_tensor_details()
    found = []
    for layer in member_layers(model, LAST_CONV_LAYER):
        pattern = re.compile(rf"(^|/){re.escape(layer.name)}(_\d+)?/")
        shape = tuple(layer.output.shape[1:])
        shaped = [d for d in details if tuple(d["shape"][1:]) == shape]
        # The op's own name comes first; where the converter fused it into another op, it is further on.
        matches = [d["index"] for d in shaped if pattern.search(d["name"].split(";")[0])] or [
            d["index"] for d in shaped if any(pattern.search(part) for part in d["name"].split(";"))
        ]
        if len(matches) != 1:
            raise NoActivationTensor(
                f"{served}: {len(matches)} tensors of shape {shape} for layer {layer.name}, expected one"
            )
        found.extend(matches)
    return found


def with_outputs(served: str | Path, tensors: list[int], path: str | Path) -> Path:
    """A copy of the TFLite file ``served`` that also outputs ``tensors`` (as ``output_1``, ``output_2``, ...,
    after its own ``output_0``). Only the output lists change: every op, weight and quantisation parameter is the
    served file's, so the probabilities are too."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(served))
    graph = model.subgraphs[0]
    if len(model.subgraphs) != 1 or len(graph.outputs) != 1 or len(model.signatureDefs) != 1:
        raise ValueError(f"{served}: expected one graph with one output and one signature")
    graph.outputs = np.asarray([*graph.outputs, *tensors], dtype=np.int32)
    for k, index in enumerate(tensors, start=1):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = f"output_{k}", int(index)
        model.signatureDefs[0].outputs.append(entry)
    flatbuffer_utils.write_model(model, str(path))
    return Path(path)


def head_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The layers after the last convolution, per network (global average pooling, Dense ``fc`` with ReLU, the
    output rows of ``probs`` that read it) as arrays for ``ml.serve.gradcam.Head``. Stored in float16 where every
    value is one (a float16-rounded model's are), else float32."""
    from ml.train.model import member_layers

    fcs = member_layers(model, "fc")
    for fc in fcs:
        if fc.activation is not keras.activations.relu:
            raise ValueError(f"{fc.name}: Grad-CAM's closed form assumes a ReLU after the hidden layer")
    kernel, bias = model.get_layer("probs").get_weights()
    rows = np.split(kernel, np.cumsum([fc.units for fc in fcs])[:-1])
    arrays = {"out_bias": bias}
    for k, (fc, out_rows) in enumerate(zip(fcs, rows, strict=True)):
        fc_kernel, fc_bias = fc.get_weights()
        arrays |= {f"fc_kernel_{k}": fc_kernel, f"fc_bias_{k}": fc_bias, f"out_kernel_{k}": out_rows}

    def compact(a):
        with np.errstate(over="ignore"):  # a value past float16's range simply keeps the array in float32
            half = a.astype(np.float16)
        return half if np.array_equal(half.astype(np.float32), a) else a.astype(np.float32)

    return {name: compact(np.asarray(a, np.float32)) for name, a in arrays.items()}


def write_explainer(model: keras.Model, served: str | Path, arrays: np.ndarray, folder: Path | None = None) -> dict:
    """Write the companion of the served TFLite file ``served`` (exported from ``model``): the served file with each
    network's last activations as further outputs (:func:`with_outputs`), and the head's weights. Both go to
    ``folder`` (default: beside ``served``).

    Checked on ``arrays`` (n, h, w, 3), preprocessed: the companion's probabilities are the served file's, bit for
    bit; the head's weights give the Keras model's probabilities from its float activations (to float rounding)
    and the companion's from its own (:data:`INT8_HEAD_TOLERANCE` where those are 8-bit). Raises ValueError on any
    mismatch (the caller discards the folder). Returns the entry for the model's JSON (``explainer``)."""
    from ml.serve.gradcam import Head
    from ml.serve.inference import LiteModel
    from ml.train.model import LAST_CONV_LAYER, member_layers

    served = Path(served)
    tflite, head_file = (Path(folder or served.parent) / p.name for p in companion_paths(served))
    tensors = activation_tensors(model, served)
    with_outputs(served, tensors, tflite)
    np.savez_compressed(head_file, **head_weights(model))
    head = Head.load(head_file)
    # The head's weights must be the model's own: on the Keras model's float activations they give its
    # probabilities to float rounding.
    convs = [layer.output for layer in member_layers(model, LAST_CONV_LAYER)]
    keras_probs, *keras_activations = keras.Model(model.input, [model.output, *convs]).predict(
        arrays, batch_size=16, verbose=0
    )
    keras_error = float(np.abs(head.probabilities(keras_activations) - keras_probs).max())
    if keras_error > 1e-5:
        raise ValueError(
            f"{head_file.name}: the head's weights give the Keras model's probabilities off by {keras_error:.2g}"
        )
    served_probs = LiteModel(served, num_threads=1).in_batches(arrays)
    companion = LiteModel(tflite, num_threads=1)
    probs, *activations = companion.outputs_in_batches(arrays)
    if not np.array_equal(probs, served_probs):
        differ = float(np.abs(probs - served_probs).max())
        raise ValueError(f"{tflite.name} answers other than {served.name} (by up to {differ:.2g}): not written")
    # In an int8 file the pooling runs on the 8-bit activations, the worker's numpy head on their float values:
    # the two part by a few thousandths (0.0026 on the shipped model); further apart, the outputs are mismatched.
    int8 = companion.quantised_outputs()
    tolerance = INT8_HEAD_TOLERANCE if any(int8[1:]) else 1e-4
    head_error = float(np.abs(head.probabilities(activations) - probs).max())
    if head_error > tolerance:
        raise ValueError(f"{head_file.name}: the head on {tflite.name}'s activations is off by {head_error:.2g}")
    return {
        "file": tflite.name,
        "head": head_file.name,
        "networks": len(activations),
        "activations_int8": bool(any(int8[1:])),
        "checked_images": len(arrays),
        "head_max_probability_error_keras": keras_error,
        "head_max_probability_error": head_error,
    }


def check_arrays(input_size: tuple[int, int], data_dir: Path, count: int = 64) -> np.ndarray:
    """Preprocessed HAM10000 val images to check a companion file on (random arrays where the data is absent)."""
    from ml.serve.preprocess import load_image, to_array
    from ml.train import data

    if (data_dir / "split.csv").exists():
        val = data.part(data.load_dataset(data_dir), "val")
        files = val["path"].iloc[:: max(len(val) // count, 1)].iloc[:count]
        return np.stack([to_array(load_image(f), input_size) for f in files])
    return np.random.default_rng(0).uniform(-1, 1, (8, *input_size, 3)).astype(np.float32)


def add_explainer(model_file: Path, data_dir: Path) -> dict:
    """Write the companion of an existing served model (``<name>.tflite`` beside ``model_file``) and record both
    files' digests in its JSON; the model's version and its served file stay as they are."""
    import json

    from ml.serve.inference import model_metadata, sha256
    from ml.train.model import load

    meta = model_metadata(model_file)
    served = model_file.with_suffix(".tflite")
    if meta["files"].get(served.name) != sha256(served):
        raise ValueError(f"{served} is not the file its JSON names: re-export the model instead")
    model = load(model_file.with_suffix(".keras"), compile=False)
    arrays = check_arrays(tuple(meta["input_size"]), data_dir)
    with tempfile.TemporaryDirectory(dir=served.parent, prefix=".explainer-") as tmp:
        entry = write_explainer(model, served, arrays, Path(tmp))
        for name in (entry["file"], entry["head"]):
            os.replace(Path(tmp) / name, served.parent / name)
    meta["explainer"] = entry
    meta["files"] |= {name: sha256(served.parent / name) for name in (entry["file"], entry["head"])}
    model_file.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return entry


def main(argv: list[str] | None = None) -> None:
    import argparse
    import logging

    from ml.serve import paths

    parser = argparse.ArgumentParser(
        prog="python -m ml.train.export",
        description="Write the worker's companion file (probabilities and last activations in one LiteRT call) "
        "and the head's weights beside a served model, and record them in its JSON.",
    )
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL.with_suffix(".keras"))
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR, help="HAM10000, for the images it checks on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    entry = add_explainer(args.model, args.data_dir)
    print(
        f"wrote {entry['file']} and {entry['head']} ({entry['networks']} networks); same probabilities as the served "
        f"file on {entry['checked_images']} images; head's probabilities within {entry['head_max_probability_error']:.1g}"
    )


if __name__ == "__main__":
    main()
