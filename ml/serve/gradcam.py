"""Grad-CAM and the quality gate's features in numpy, from a network's last activations and its head's weights.

The worker's companion file (``ml.train.export.write_explainer``) gives, in one LiteRT call, the probabilities and each
member network's last convolutional activations ``A`` (h, w, c). Every member's head is global average pooling,
a Dense layer with ReLU and its rows of the output layer, so the gradient of a class's logit with respect to
``A`` has a closed form, the same at every position::

    pooled = mean over (h, w) of A;  z = pooled @ W_fc + b_fc
    d logit_k / d A[y, x, :] = W_fc[:, z > 0] @ W_out[z > 0, k] / (h * w)

Grad-CAM weighs each channel by its gradient averaged over the positions, which is that vector; an ensemble's
logit is the sum of its members' (the output layer already holds their average), so the members' maps add up:
``cam = relu(sum over members of A @ weights)``. This is what ``ml.study.keras_gradcam`` computes with TensorFlow's
gradients; the tests hold the two together. The gate reads the pooled activations averaged over the members.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.serve.inference import softmax


@dataclass(frozen=True, eq=False)
class Head:
    fc_kernels: tuple[np.ndarray, ...]  # per member (c, units)
    fc_biases: tuple[np.ndarray, ...]  # per member (units,)
    out_kernels: tuple[np.ndarray, ...]  # per member (units, classes): its rows of the output layer
    out_bias: np.ndarray  # (classes,)

    @classmethod
    def load(cls, path: str | Path) -> Head:
        with np.load(path) as stored:
            arrays = {k: stored[k].astype(np.float32) for k in stored.files}
        members = len([k for k in arrays if k.startswith("fc_kernel_")])
        if members == 0:
            raise ValueError(f"{path} holds no head weights")
        return cls(
            fc_kernels=tuple(arrays[f"fc_kernel_{k}"] for k in range(members)),
            fc_biases=tuple(arrays[f"fc_bias_{k}"] for k in range(members)),
            out_kernels=tuple(arrays[f"out_kernel_{k}"] for k in range(members)),
            out_bias=arrays["out_bias"],
        )

    @property
    def members(self) -> int:
        return len(self.fc_kernels)

    def _check(self, activations: list[np.ndarray]) -> None:
        if len(activations) != self.members:
            raise ValueError(f"{len(activations)} activation maps for a head of {self.members} networks")

    def logits(self, activations: list[np.ndarray]) -> np.ndarray:
        """Members' activations, each (n, h, w, c) -> (n, classes) logits."""
        self._check(activations)
        total = self.out_bias.astype(np.float64)
        for a, fc, b, out in zip(activations, self.fc_kernels, self.fc_biases, self.out_kernels, strict=True):
            hidden = np.maximum(a.mean(axis=(1, 2)) @ fc + b, 0.0)
            total = total + hidden @ out
        return total

    def probabilities(self, activations: list[np.ndarray]) -> np.ndarray:
        """(n, classes) softmax of :meth:`logits`."""
        return softmax(self.logits(activations))

    def cam(self, activations: list[np.ndarray], class_index: int) -> np.ndarray:
        """Members' activations of one image, each (h, w, c) -> the coarse Grad-CAM (h, w) of ``class_index``."""
        self._check(activations)
        linear = None
        for a, fc, b, out in zip(activations, self.fc_kernels, self.fc_biases, self.out_kernels, strict=True):
            active = a.mean(axis=(0, 1)) @ fc + b > 0  # where ReLU passes the gradient
            weights = fc[:, active] @ out[active, class_index] / (a.shape[0] * a.shape[1])
            term = a @ weights
            linear = term if linear is None else linear + term
        return np.maximum(linear, 0.0).astype(np.float32)

    @staticmethod
    def features(activations: list[np.ndarray]) -> np.ndarray:
        """Members' activations, each (n, h, w, c) -> (n, c) pooled features averaged over the members (the gate's)."""
        return np.mean([a.mean(axis=(1, 2)) for a in activations], axis=0)
