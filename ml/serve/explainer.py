"""Why the model said what it said, and whether to trust it: Grad-CAM heatmaps and the quality gate.

What a worker runs for every image. One LiteRT call on the served model's companion file
(``ml.train.export.write_explainer``) gives the probabilities and each member network's last convolutional
activations (``out_relu``); the Grad-CAM of the predicted class follows from those and the head's weights in
closed form (``ml.serve.gradcam``), and the quality gate (``ml.serve.quality_gate``) reads their average (the pooled features).
Neither TensorFlow nor Keras is imported here: ``ml.study.keras_gradcam`` is the Keras reference the tests hold this to.
Loaded once per process (:func:`get_explainer`). ``python -m ml.study.explain`` (ml/study/explain.py) draws one image's
overlay, or times this module and measures its memory (``--bench``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.serve import paths
from ml.serve.gradcam import Head
from ml.serve.inference import LiteModel, Prediction, model_metadata, prediction_of, sha256
from ml.serve.labels import CLASSES
from ml.serve.preprocess import ImageSource, load_image, to_array
from ml.serve.quality_gate import GATE_FILE_NAME, QualityGate

# Constant-weight blending keeps the image readable under the colour; inferno's lightness rises monotonically
# from black to pale yellow, so "hot" stays the lightest part of the overlay in greyscale print too.
OVERLAY_ALPHA = 0.45
COLORMAP = "inferno"
# matplotlib's inferno at 256 levels, as bytes (a test holds it to matplotlib's): serving needs no matplotlib.
COLORMAP_FILE = Path(__file__).with_name("inferno.npy")


@dataclass(frozen=True)
class Explanation:
    prediction: Prediction  # from the same call as the heatmap and the gate's features
    heatmap: np.ndarray  # float32 (H, W) in [0, 1]; H, W = the image's size after EXIF transpose
    overlay: Image.Image  # RGB, same size: the heatmap blended over the image
    quality_flags: list[str]  # plain-language reasons the image may not be a dermoscopic lesion image; [] = passes


@functools.cache
def _colormap_lut() -> np.ndarray:
    """(256, 3) uint8 lookup table of the colormap."""
    return np.load(COLORMAP_FILE)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A coarse (h, w) map -> float32 (H, W) in [0, 1] for an image of PIL ``size`` (W, H).

    Bicubic through PIL's float mode keeps the pixel centres of the coarse grid aligned with the image, as the
    model's own bilinear resize does; the overshoot of bicubic is clipped.
    """
    peak = float(cam.max())
    if peak <= 0:
        # No region speaks for the class (every weighted activation is negative): an honest all-zero map.
        return np.zeros((size[1], size[0]), np.float32)
    big = Image.fromarray((cam / peak).astype(np.float32)).resize(size, Image.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32), 0.0, 1.0)


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The heatmap in the colormap, blended over the RGB image (same size).

    PIL's blend works on bytes in C: several times faster than float arithmetic on a 12-megapixel phone photo.
    """
    colours = Image.fromarray(_colormap_lut()[(heatmap * 255 + 0.5).astype(np.uint8)])
    return Image.blend(image.convert("RGB"), colours, alpha)


class Companion:
    """The served model's companion file and its head's weights: one LiteRT call gives the probabilities (the same
    numbers as the served file, checked when the companion is written) and each network's last activations."""

    feature_source = "litert-companion"  # the gate's feature cache is kept per kind of features (ml.train.quality_fit)

    def __init__(self, model_path: str | Path | None = None, num_threads: int | None = None):
        self.model_path = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".tflite")
        meta = model_metadata(self.model_path)
        self.version: str = meta["version"]
        self.input_size: tuple[int, int] = tuple(meta["input_size"])
        entry = meta.get("explainer")
        if not entry:
            raise FileNotFoundError(
                f"{self.model_path.name} has no companion file for Grad-CAM: run `python -m ml.train.export`"
            )
        folder = self.model_path.parent
        for name in (entry["file"], entry["head"]):
            if meta["files"].get(name) != sha256(folder / name):
                raise ValueError(f"{folder / name} is not the file {self.model_path.with_suffix('.json').name} names")
        self.lite = LiteModel(folder / entry["file"], num_threads=num_threads)
        self.head = Head.load(folder / entry["head"])

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(n, h, w, 3) preprocessed arrays -> (n, 7) probabilities and each network's (n, h/32, w/32, c)
        last activations, from one call."""
        probs, *activations = self.lite.outputs(batch)
        return probs, activations

    def pooled_features(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) preprocessed arrays -> (n, c) pooled features, for fitting and evaluating the gate."""
        return self.head.features(self.outputs(batch)[1])


class Explainer:
    """The served model's :class:`Companion` and the quality gate fitted for it, loaded once."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        gate_path: str | Path | None = None,
        num_threads: int | None = None,
    ):
        model_path = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".tflite")
        version = model_metadata(model_path)["version"]
        self.gate = QualityGate.load(Path(gate_path) if gate_path else model_path.parent / GATE_FILE_NAME)
        if self.gate.model_version != version:
            # Statistics of another model's features would flag at random: refuse before loading anything else.
            raise ValueError(
                f"the quality gate was fitted for {self.gate.model_version}, not {version}: run `python -m ml.study.quality fit`"
            )
        self.companion = Companion(model_path, num_threads)
        self.version, self.input_size = self.companion.version, self.companion.input_size

    def explain(self, source: ImageSource, class_index: int | None = None) -> Explanation:
        """The prediction, the Grad-CAM of ``class_index`` (an index into ``ml.serve.labels.CLASSES``; default: the
        predicted class) and the quality gate's verdict, from one pass of the model."""
        if class_index is not None and not 0 <= class_index < len(CLASSES):
            raise ValueError(f"class_index {class_index}: the model has {len(CLASSES)} classes")
        image = load_image(source)
        probs, activations = self.companion.outputs(to_array(image, self.input_size)[None])
        prediction = prediction_of(probs[0], self.version)
        index = CLASSES.index(prediction.predicted_class) if class_index is None else int(class_index)
        head = self.companion.head
        heatmap = upsample(head.cam([a[0] for a in activations], index), image.size)
        return Explanation(
            prediction=prediction,
            heatmap=heatmap,
            overlay=overlay_heatmap(image, heatmap),
            quality_flags=self.gate.check(image, head.features(activations)[0]),
        )


@functools.cache
def get_explainer() -> Explainer:
    """The process's explainer, loaded on first use and kept."""
    return Explainer()
