"""The classifier: MobileNetV2 (ImageNet weights from a file) + global average pooling + Dense/ReLU + Dropout + Dense softmax.

The model is one flat Keras graph, so Grad-CAM can read the last convolutional activations (``out_relu``)
and the same file can be fine-tuned further. Batch normalisation is frozen (inference mode) everywhere:
the shipped ImageNet weights have BN folded into the convolutions, and batch statistics would wreck them.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import layers

from ml.serve.labels import CLASSES
from ml.serve.preprocess import INPUT_SIZE

LAST_CONV_LAYER = "out_relu"
COLOUR_CONSTANCY_LAYER = "colour_constancy"


@keras.saving.register_keras_serializable(package="skinsite")
class ShadesOfGray(layers.Layer):
    """Colour constancy inside the model: each image's colour channels rescaled so that their Minkowski
    ``power``-means are equal (the "shades of grey" estimate of the light's colour; 1 is grey world, higher
    powers lean towards the brightest pixels: in dermoscopy the skin around the lesion, not the lesion).

    A light of another colour temperature, or another dermatoscope's white balance, scales the channels; this
    layer undoes such a scaling (up to clipping), so the network sees the same image under either. It works on
    the preprocessed input (MobileNetV2's [-1, 1]) and keeps each image's overall brightness; being part of the
    model, every path that feeds the model an image (training's cache, ``ml.predict``, the workers) gets it.
    A recipe option (``ml.train --set colour_constancy=6``), not in the shipped model: see ``ml.train.fit.Recipe``.
    """

    def __init__(self, power: float = 6.0, **kwargs):
        super().__init__(**kwargs)
        self.power = float(power)

    def call(self, x):
        ops = keras.ops
        unit = (x + 1.0) * 0.5
        norms = ops.power(ops.mean(ops.power(unit, self.power), axis=(1, 2), keepdims=True), 1.0 / self.power)
        gains = ops.mean(norms, axis=-1, keepdims=True) / ops.maximum(norms, 1e-3)
        return ops.minimum(unit * gains, 1.0) * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "power": self.power}


def load(path: str | Path, compile: bool = True) -> keras.Model:
    """A saved classifier (``.keras``), with this module's own layers (:class:`ShadesOfGray`) known to Keras."""
    return keras.models.load_model(path, compile=compile)


def build_classifier(
    weights: str | Path | None,
    input_size: tuple[int, int] = INPUT_SIZE,
    units: int = 256,
    dropout: float = 0.3,
    alpha: float = 1.0,
    seed: int = 0,
    freeze_batch_norm: bool = True,
    colour_constancy: float | None = None,
) -> keras.Model:
    """``weights``: path to MobileNetV2 ImageNet weights (no top), or None for random init (tests), drawn from
    ``seed`` (``keras.utils.set_random_seed``: Python's, NumPy's and the backend's generators are reseeded).
    Untrained, one seed in the twelve tried gave a network whose activations die out before the head, so the
    tests' networks must not depend on what was drawn before them.

    ``colour_constancy``: the power of a :class:`ShadesOfGray` layer put before MobileNetV2; None: none.

    ``freeze_batch_norm=False`` only makes sense from random init: there the batch statistics are all the
    scale the network has (the tests train a tiny network from scratch this way).
    """
    if not weights:
        keras.utils.set_random_seed(seed)
    if colour_constancy is None:
        base = keras.applications.MobileNetV2(
            input_shape=(*input_size, 3), include_top=False, weights=str(weights) if weights else None, alpha=alpha
        )
        inputs = base.input
    else:
        inputs = keras.Input((*input_size, 3))
        balanced = ShadesOfGray(colour_constancy, name=COLOUR_CONSTANCY_LAYER)(inputs)
        base = keras.applications.MobileNetV2(
            input_tensor=balanced, include_top=False, weights=str(weights) if weights else None, alpha=alpha
        )
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = not freeze_batch_norm  # Keras 3 runs a non-trainable BN layer in inference mode
    return keras.Model(inputs, head(base.output, units, dropout, seed), name="skinsite_mobilenetv2")


def head(activations, units: int, dropout: float, seed: int):
    """The classifier's head on the last convolutional ``activations``: global average pooling (``pool``), Dense
    with ReLU (``fc``), Dropout, Dense softmax (``probs``). Grad-CAM, the gate and ``ml.train.ensemble`` read these
    layers by name, whatever network lies below them (the tests put one on a toy network)."""
    x = layers.GlobalAveragePooling2D(name="pool")(activations)
    x = layers.Dense(units, activation="relu", name="fc", kernel_initializer=keras.initializers.HeNormal(seed))(x)
    x = layers.Dropout(dropout, name="dropout", seed=seed)(x)
    return layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)


def member_name(k: int, name: str) -> str:
    """The name of member ``k``'s copy of layer ``name`` in an ensemble (``ml.train.ensemble``)."""
    return f"member{k}_{name}"


def member_layers(model: keras.Model, name: str) -> list[keras.layers.Layer]:
    """The layer called ``name``, or in an ensemble (``ml.train.ensemble``) each member's copy of it, in member order."""
    found = [layer for layer in model.layers if layer.name == name]
    copies = {}
    for layer in model.layers:
        if match := re.fullmatch(rf"member(\d+)_{re.escape(name)}", layer.name):
            copies[int(match[1])] = layer
    if not found and not copies:
        raise ValueError(f"{model.name} has no layer {name!r}")
    return found + [copies[k] for k in sorted(copies)]


def layer_inputs(layer: keras.layers.Layer) -> list[str]:
    """The names of the layers whose outputs ``layer`` reads (in a functional model)."""
    node = layer._inbound_nodes[0]
    return [t._keras_history[0].name for t in keras.tree.flatten(node.input_tensors)]


def split_model(model: keras.Model, cut: str, until: str | None = None) -> tuple[keras.Model, keras.Model]:
    """Split at layer ``cut`` into (lower, upper) that share the original layers and weights.

    ``upper`` runs from after ``cut`` to the output, or to layer ``until`` where given.

    Training ``upper`` on cached outputs of ``lower`` trains the same variables as ``model``: there is no
    copying back. ``cut`` must be a layer whose output is the only tensor that later layers need
    (a block's ``_add`` layer in MobileNetV2).
    """
    lower = keras.Model(model.input, model.get_layer(cut).output, name="lower")
    inp = keras.Input(model.get_layer(cut).output.shape[1:], name="cached")
    upper = keras.Model(inp, replay_after(model, cut, inp, until), name="upper")
    return lower, upper


def replay_after(model: keras.Model, cut: str, tensor, until: str | None = None, copy_as=None):
    """Call the layers of ``model`` after layer ``cut`` that layer ``until`` (default: the last) depends on, in
    order, on ``tensor`` (standing for ``cut``'s output); returns ``until``'s output. ``copy_as(name)``, where
    given, names a fresh copy of each layer (same configuration and weights) to call instead of the layer."""
    names = [layer.name for layer in model.layers]
    needed, todo = set(), [until or names[-1]]
    while todo:  # ``until`` and what it reads, back to the cut (an ensemble's other members are left out)
        name = todo.pop()
        if name not in needed and name != cut:
            needed.add(name)
            todo.extend(layer_inputs(model.get_layer(name)))
    tensors = {cut: tensor}
    for layer in model.layers[names.index(cut) + 1 :]:
        if layer.name not in needed:
            continue
        sources = layer_inputs(layer)
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ValueError(f"cannot cut at {cut}: {layer.name} also reads {missing}")
        args = [tensors[s] for s in sources]
        called = layer
        if copy_as:
            called = type(layer).from_config({**layer.get_config(), "name": copy_as(layer.name)})
        tensors[layer.name] = called(args if len(args) > 1 else args[0])
        if copy_as:
            called.set_weights(layer.get_weights())
            called.trainable = layer.trainable
        if layer.name == until:
            break
    return tensors[until or model.layers[-1].name]


def set_trainable_from(model: keras.Model, first: str | None, freeze_batch_norm: bool = True) -> None:
    """Freeze every layer before ``first`` (a layer name); None freezes the whole MobileNetV2 base."""
    names = [layer.name for layer in model.layers]
    start = names.index(first) if first else names.index("pool")
    for i, layer in enumerate(model.layers):
        is_bn = isinstance(layer, layers.BatchNormalization)
        layer.trainable = i >= start and not (is_bn and freeze_batch_norm)


def fold_output_adjustment(model: keras.Model, bias, temperature: float) -> None:
    """Bake a logit adjustment and a temperature into the last Dense layer, in place.

    softmax((W x + b + bias) / T) is again a softmax Dense layer with W/T and (b + bias)/T, so the served
    file outputs calibrated probabilities at the chosen operating point with no custom layer.
    """
    dense = model.get_layer("probs")
    kernel, b = dense.get_weights()
    dense.set_weights([kernel / temperature, (b + bias) / temperature])


def unfold_output_adjustment(model: keras.Model, bias, temperature: float) -> None:
    """Undo :func:`fold_output_adjustment`, in place: the last layer gives raw logits again."""
    dense = model.get_layer("probs")
    kernel, b = dense.get_weights()
    dense.set_weights([kernel * temperature, b * temperature - bias])
