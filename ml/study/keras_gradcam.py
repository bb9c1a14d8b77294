"""Grad-CAM and pooled features with TensorFlow's own gradients, on the Keras model: the reference that the
worker's numpy Grad-CAM (``ml.serve.gradcam``, on the LiteRT companion file) is held to by the tests, and what
``ml.train.ensemble`` checks a new ensemble with. Imports TensorFlow: training and ``ml`` commands only, never a worker.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.serve.inference import model_metadata


class GradCam:
    """Grad-CAM and pooled features of a Keras classifier built by ``ml.train.model.build_classifier`` or ``ml.train.ensemble``.

    The class score is the logit of the last Dense layer (before softmax): gradients of a softmax output
    vanish where the model is confident, which would blank the map exactly for the clearest images.
    """

    def __init__(self, model, input_size: tuple[int, int]):
        import keras
        import tensorflow as tf

        from ml.train.model import LAST_CONV_LAYER, member_layers  # ml.train.model imports Keras at module level

        self.input_size = input_size
        head = model.get_layer("probs")
        # One model, or an ensemble (ml.train.ensemble) with one last convolution and one pooling layer per member.
        convs = [layer.output for layer in member_layers(model, LAST_CONV_LAYER)]
        pools = [layer.output for layer in member_layers(model, "pool")]
        net = keras.Model(model.input, [convs, pools, head.input])
        kernel, bias = head.kernel, head.bias

        @tf.function(
            input_signature=[tf.TensorSpec((1, *input_size, 3), tf.float32), tf.TensorSpec((), tf.int32)],
            jit_compile=False,
        )
        def cam(x, class_index):
            with tf.GradientTape() as tape:
                activations, pooled, hidden = net(x, training=False)
                logits = tf.matmul(hidden, kernel) + bias
                score = logits[0, class_index]
            grads = tape.gradient(score, activations)
            # Per member, one weight per channel (its average gradient); an ensemble's members add up, since its
            # class score is the sum of theirs (divided by their number, folded into the head's weights).
            linear = tf.add_n(
                [
                    tf.einsum("bhwc,bc->bhw", a, tf.reduce_mean(g, axis=(1, 2)))
                    for a, g in zip(activations, grads, strict=True)
                ]
            )
            return tf.nn.relu(linear)[0], tf.add_n(pooled)[0] / len(pooled), tf.nn.softmax(logits)[0]

        features_net = keras.Model(model.input, pools)

        @tf.function(reduce_retracing=True)
        def features(x):
            pooled = features_net(x, training=False)
            return tf.add_n(pooled) / len(pooled)

        self._cam, self._features = cam, features
        self._tf = tf
        self._lock = threading.Lock()  # tf.function calls are thread-safe, but one at a time keeps memory flat

    def __call__(self, array: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One preprocessed (h, w, 3) array -> (coarse CAM (h/32, w/32), pooled features (1280,), probabilities)."""
        with self._lock:
            heat, pooled, probs = self._cam(
                self._tf.constant(array[None]), self._tf.constant(class_index, self._tf.int32)
            )
        return heat.numpy(), pooled.numpy(), probs.numpy()

    def pooled_features(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) preprocessed arrays -> (n, 1280) pooled features, for fitting and evaluating the gate."""
        with self._lock:
            return self._features(self._tf.constant(batch)).numpy()


def _limit_tensorflow_threads() -> None:
    """Give TensorFlow the thread budget the LiteRT interpreter gets (SKINSITE_INFERENCE_THREADS): several worker
    processes on a small machine each taking every core slow each other down."""
    import tensorflow as tf

    threads = int(os.environ.get("SKINSITE_INFERENCE_THREADS", 0))
    if threads:
        with contextlib.suppress(RuntimeError):  # too late once TensorFlow has run something in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_grad_cam(model_path: str | Path | None = None) -> tuple[GradCam, str]:
    """The Keras twin of a served model (``skinsite.keras`` beside ``skinsite.tflite``) and its version, warmed up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml.train.model import load

    _limit_tensorflow_threads()
    keras_file = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".keras")
    meta = model_metadata(keras_file)
    grad_cam = GradCam(load(keras_file, compile=False), tuple(meta["input_size"]))
    # The first call traces the graph and allocates (seconds): pay it here, not in the first analysis.
    grad_cam(np.zeros((*grad_cam.input_size, 3), np.float32), 0)
    return grad_cam, meta["version"]
