"""The quality gate at serving time: does an upload look like a dermoscopic lesion image the model can speak about?

Two halves, both fitted on HAM10000 and stored beside the model (``quality_gate.npz``, with the version of
the model whose features it read):

- Cheap image checks on what the model sees (the image resized to its input size): too small, almost uniform,
  too dark, too bright, heavily blurred, without colour. Each threshold sits below (or above) nearly all HAM10000
  *train* images: a low (high) percentile of their own statistics, widened by a margin.
- A feature-space check: the Mahalanobis distance of the model's pooled features (1280 numbers from the same
  forward pass as Grad-CAM) to the train images' features, after PCA, with a Ledoit-Wolf shrunk covariance.
  The threshold is a high percentile of the *val* images' distances, so about 1.5% of val is flagged.

``python -m ml.study.quality fit`` fits and writes the file (ml/train/quality_fit.py); ``python -m ml.study.quality evaluate`` measures
the fraction of HAM10000 test images wrongly flagged and, per category, the fraction of non-dermoscopic images
flagged, and writes them into ``metrics.json`` and the model card (ml/study/quality_eval.py).

This module imports no TensorFlow and nothing of the fitting or the evaluation; the worker reads the features
from the served companion file (``ml.serve.explainer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ml.serve import paths
from ml.serve.preprocess import HAM_SCALE

GATE_FILE_NAME = "quality_gate.npz"

# One short sentence per reason, for clinic staff: what is wrong, in plain words.
MESSAGES: dict[str, str] = {
    "too_small": "The image is too small: there are too few pixels to judge the lesion.",
    "uniform": "The image is almost uniform: it may be blank or a black frame.",
    "too_dark": "The image is too dark to judge the lesion.",
    "too_bright": "The image is too bright or washed out to judge the lesion.",
    "blurred": "The image is heavily blurred or out of focus.",
    "noisy": "The image is mostly grainy noise or fine texture, not a lesion.",
    "no_colour": "The image has almost no colour: the model only knows colour dermoscopic images.",
    "unfamiliar": "The image does not look like a dermoscopic lesion image.",
}

STAT_NAMES = ("short_side", "brightness", "contrast", "sharpness", "fine_detail", "colourfulness")


def image_stats(image: Image.Image, size: tuple[int, int] = HAM_SCALE) -> dict[str, float]:
    """Cheap statistics of an RGB image resized to ``size`` (height x width).

    At the images' own scale, whatever the model's input size: upsampled to a larger input, every image looks
    blurred alike and a blurred upload no longer stands out.

    brightness and contrast: mean and standard deviation of luminance in [0, 1]. sharpness: the standard
    deviation of the Laplacian of luminance divided by the luminance's own standard deviation, so a
    low-contrast but sharp image is not taken for a blurred one. fine_detail: detail finer than about 2 pixels
    relative to detail finer than about 8 (both as standard deviations of luminance minus a Gaussian blur of it);
    it falls for a small image enlarged, whose finest detail was never there, even when its edges look crisp
    enough to the Laplacian. colourfulness: Hasler and Suesstrunk's
    measure on [0, 1] channels (0 for greyscale).
    """
    short_side = float(min(image.size))
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    lum = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
    contrast = float(lum.std())
    laplacian = ndimage.laplace(ndimage.gaussian_filter(lum, 0.5))
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return {
        "short_side": short_side,
        "brightness": float(lum.mean()),
        "contrast": contrast,
        "sharpness": float(laplacian.std() / max(contrast, 1e-3)),
        "fine_detail": float(
            (lum - ndimage.gaussian_filter(lum, 1)).std() / max((lum - ndimage.gaussian_filter(lum, 4)).std(), 1e-4)
        ),
        "colourfulness": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
    }


@dataclass(frozen=True, eq=False)  # arrays inside: == would be ambiguous
class QualityGate:
    """Thresholds and the feature-space model; ``check`` gives the plain-language reasons to distrust an image."""

    model_version: str
    min_short_side: float
    min_contrast: float
    min_brightness: float
    max_brightness: float
    min_sharpness: float
    min_fine_detail: float
    min_colourfulness: float
    feature_mean: np.ndarray  # (1280,)
    components: np.ndarray  # (k, 1280): PCA axes
    precision: np.ndarray  # (k, k): inverse of the shrunk covariance of the projected train features
    residual_variance: float  # per-dimension variance of the train features outside the PCA axes
    max_distance: float  # Mahalanobis distance above which an image is unfamiliar
    max_sharpness: float  # above it the image is mostly pixel noise or fine texture

    def image_reasons(self, stats: dict[str, float]) -> list[str]:
        """Reason codes (keys of MESSAGES) from :func:`image_stats`."""
        reasons = []
        if stats["short_side"] < self.min_short_side:
            reasons.append("too_small")
        if stats["contrast"] < self.min_contrast:
            reasons.append("uniform")
        if stats["brightness"] < self.min_brightness:
            reasons.append("too_dark")
        if stats["brightness"] > self.max_brightness:
            reasons.append("too_bright")
        # A uniform frame has no detail to be sharp about: saying "blurred" as well would only confuse.
        too_soft = stats["sharpness"] < self.min_sharpness or stats["fine_detail"] < self.min_fine_detail
        if too_soft and "uniform" not in reasons:
            reasons.append("blurred")
        if stats["sharpness"] > self.max_sharpness:
            reasons.append("noisy")
        if stats["colourfulness"] < self.min_colourfulness and "uniform" not in reasons:
            reasons.append("no_colour")
        return reasons

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(n, 1280) pooled features -> (n,) Mahalanobis distances to the train images' features.

        The covariance is Ledoit-Wolf's on the top PCA axes and isotropic (``residual_variance``) on the rest, as in
        probabilistic PCA: an unfamiliar image shows up mostly *off* the axes along which lesions vary (a
        document's features are not an unusual mix of lesion features, they point elsewhere).
        """
        centred = transform(features) - self.feature_mean
        z = centred @ self.components.T
        residual = centred - z @ self.components
        inside = np.einsum("ij,jk,ik->i", z, self.precision, z)
        return np.sqrt(inside + (residual**2).sum(axis=1) / self.residual_variance)

    def reasons(self, stats: list[dict[str, float]], features: np.ndarray) -> list[list[str]]:
        distances = self.distances(features)
        out = []
        for s, d in zip(stats, distances):
            codes = self.image_reasons(s)
            if d > self.max_distance:
                codes.append("unfamiliar")
            out.append(codes)
        return out

    def check(self, image: Image.Image, features: np.ndarray) -> list[str]:
        """One RGB image (as uploaded, upright) and its pooled features -> messages; an empty list passes the gate."""
        codes = self.reasons([image_stats(image)], np.reshape(features, (1, -1)))[0]
        return [MESSAGES[c] for c in codes]

    def save(self, path: Path, report: dict | None = None) -> None:
        """Write the gate as a compressed .npz; ``report`` (how it was fitted) is kept beside as a JSON string."""
        arrays = {k: np.asarray(v) for k, v in self.__dict__.items() if k != "model_version"}
        # float32 axes and precision keep the file small; distances move by far less than the threshold's margin.
        for key in ("components", "precision", "feature_mean"):
            arrays[key] = arrays[key].astype(np.float32)
        extra = {"report": np.asarray(json.dumps(report or {}))}
        np.savez_compressed(path, model_version=np.asarray(self.model_version), **extra, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> QualityGate:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `python -m ml.study.quality fit`")
        with np.load(path) as stored:
            values = {k: stored[k] for k in stored.files}
        fields = {}
        for name in cls.__dataclass_fields__:
            value = values[name]
            if name == "model_version":
                fields[name] = str(value)
            elif value.ndim == 0:
                fields[name] = float(value)
            else:
                fields[name] = value.astype(np.float64)
        return cls(**fields)


def transform(features: np.ndarray) -> np.ndarray:
    """Square roots of the pooled features: they are non-negative (after ReLU) and right-skewed, and the square
    root brings them nearer the Gaussian shape that a Mahalanobis distance assumes."""
    return np.sqrt(np.maximum(np.asarray(features, np.float64), 0.0))


def stored_version(path: str | Path | None = None) -> str:
    """The model version a gate file was fitted for (reads one small array)."""
    with np.load(Path(path or paths.MODELS_DIR / GATE_FILE_NAME)) as stored:
        return str(stored["model_version"])
