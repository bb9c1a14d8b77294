"""A toy stand-in for MobileNetV2 for the tests of procedures that do not depend on MobileNetV2's own layers
(ensembles, exports, quantisation, Grad-CAM): the layer names those procedures read (a ``block_2_add`` to cut
at, ``out_relu`` as the last activations at 1/32 of the input, then ``ml.train.model.head``) on a few convolutions.
A TFLite conversion of it takes under a second where the smallest MobileNetV2 takes about eight, and its
activations do not fade out untrained as MobileNetV2's do."""

import keras
from keras import layers

from ml.train.model import COLOUR_CONSTANCY_LAYER, ShadesOfGray, head

CUT = "block_2_add"


def toy_classifier(
    input_size: tuple[int, int], units: int = 8, seed: int = 0, colour_constancy: float | None = None
) -> keras.Model:
    """As ``ml.train.model.build_classifier(None, input_size, units, seed=seed, colour_constancy=...)`` builds one,
    on the toy network: weights drawn from ``seed``, batch normalisation in inference mode."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*input_size, 3))
    x = inputs
    if colour_constancy is not None:
        x = ShadesOfGray(colour_constancy, name=COLOUR_CONSTANCY_LAYER)(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    branch = layers.DepthwiseConv2D(3, padding="same", name="block_1_depthwise")(x)
    branch = layers.Conv2D(8, 1, name="block_1_project")(branch)
    x = layers.Add(name=CUT)([x, branch])  # a block's sum: the only tensor the layers above read
    x = layers.Conv2D(16, 3, strides=4, padding="same", name="block_3_expand")(x)
    x = layers.ReLU(6.0, name="block_3_relu")(x)
    x = layers.Conv2D(32, 3, strides=4, padding="same", name="Conv_1")(x)
    norm = layers.BatchNormalization(name="Conv_1_bn")
    norm.trainable = False
    x = norm(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    return keras.Model(inputs, head(x, units, 0.3, seed), name="toy_classifier")
