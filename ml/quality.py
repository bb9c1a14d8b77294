"""The quality gate: does an upload look like a dermoscopic lesion image the model can speak about?

Two halves, both fitted on HAM10000 and stored beside the model (``quality_gate.npz``, with the version of
the model whose features it read):

- Cheap image checks on what the model sees (the image resized to its input size): too small, almost uniform,
  too dark, too bright, heavily blurred, without colour. Each threshold sits below (or above) nearly all HAM10000
  *train* images: a low (high) percentile of their own statistics, widened by a margin.
- A feature-space check: the Mahalanobis distance of the model's pooled features (1280 numbers from the same
  forward pass as Grad-CAM) to the train images' features, after PCA, with a Ledoit-Wolf shrunk covariance.
  The threshold is a high percentile of the *val* images' distances, so about 1.5% of val is flagged.

``python -m ml.quality fit`` fits and writes the file; ``python -m ml.quality evaluate`` measures the fraction
of HAM10000 test images wrongly flagged and, per category, the fraction of non-dermoscopic images flagged,
and writes them into ``metrics.json`` and the model card.

This module imports no TensorFlow; the commands read the features from the served companion file (``ml.explain``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from . import paths
from .preprocess import HAM_SCALE

log = logging.getLogger("ml.quality")

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
            raise FileNotFoundError(f"{path} is missing: run `python -m ml.quality fit`")
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


# --- fitting -------------------------------------------------------------------------------------------------


def extract(extractor, images: list, batch: int = 32, desc: str = "") -> tuple[list[dict[str, float]], np.ndarray]:
    """Image statistics and pooled features of many images (paths or PIL images), batched."""
    from concurrent.futures import ThreadPoolExecutor

    from .preprocess import load_image, to_array

    def load(item):
        image = load_image(item)
        return image_stats(image), to_array(image, extractor.input_size)

    stats, features = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(images), batch):
            loaded = list(pool.map(load, images[start : start + batch]))
            stats.extend(s for s, _ in loaded)
            features.append(extractor.pooled_features(np.stack([a for _, a in loaded])))
            if desc and (start // batch) % 20 == 0:
                log.info("%s: %d/%d", desc, start + len(loaded), len(images))
    return stats, np.concatenate(features)


def cached_extract(extractor, version: str, frame, part: str) -> tuple[list[dict[str, float]], np.ndarray]:
    """:func:`extract` over one split part, kept in ml/cache/quality/<model version>/<kind of features>/ (it takes
    minutes): the Keras model's float features and the served companion's differ."""
    folder = paths.CACHE_DIR / "quality" / version / getattr(extractor, "feature_source", "keras")
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{part}.npz"
    if file.exists():
        with np.load(file) as stored:
            # A cache from before a statistic was added or renamed is recomputed, never misread.
            if "stat_names" in stored.files and tuple(stored["stat_names"]) == STAT_NAMES:
                table = stored["stats"]
                return [dict(zip(STAT_NAMES, map(float, row))) for row in table], stored["features"]
    rows = frame[frame["split"] == part]
    stats, features = extract(extractor, rows["path"].tolist(), desc=part)
    table = np.asarray([[s[k] for k in STAT_NAMES] for s in stats])
    np.savez(file, stats=table, stat_names=np.asarray(STAT_NAMES), features=features)
    return stats, features


# Margins around the train percentiles: the percentiles sit at the edge of what HAM10000 images do, and a
# new dermatoscope or camera should not be flagged for being a little darker or softer than Vienna's.
# fine_detail is a ratio that varies little between real images (train minimum 0.83 times its 0.5th
# percentile), so a narrower margin already clears all but a few of them and still catches enlarged thumbnails.
PERCENTILE = 0.5
MARGIN = 0.7
FINE_DETAIL_MARGIN = 0.9
VAL_FLAG_RATE = 0.015
PCA_COMPONENTS = 128


def fit(extractor, version: str, frame) -> tuple[QualityGate, dict]:
    """Fit the gate: thresholds on train statistics, PCA + Ledoit-Wolf on train features, distance cut on val."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    train_stats, train_features = cached_extract(extractor, version, frame, "train")
    _, val_features = cached_extract(extractor, version, frame, "val")
    table = {k: np.asarray([s[k] for s in train_stats]) for k in STAT_NAMES}

    def low(key):
        return float(np.percentile(table[key], PERCENTILE))

    def high(key):
        return float(np.percentile(table[key], 100 - PERCENTILE))

    train_x = transform(train_features)
    pca = PCA(n_components=PCA_COMPONENTS, random_state=0).fit(train_x)
    projected = pca.transform(train_x)
    shrunk = LedoitWolf().fit(projected)
    residual = train_x - pca.inverse_transform(projected)
    gate = QualityGate(
        model_version=version,
        # HAM10000 images are all 200x150, so the size floor is half the model's input height instead:
        # below it the model sees an image upsampled more than twice.
        min_short_side=min(low("short_side"), extractor.input_size[0]) / 2,
        min_contrast=MARGIN * low("contrast"),
        min_brightness=MARGIN * low("brightness"),
        max_brightness=1 - MARGIN * (1 - high("brightness")),
        min_sharpness=MARGIN * low("sharpness"),
        min_fine_detail=FINE_DETAIL_MARGIN * low("fine_detail"),
        min_colourfulness=MARGIN * low("colourfulness"),
        feature_mean=pca.mean_,
        components=pca.components_,
        precision=shrunk.precision_,
        residual_variance=float((residual**2).sum(axis=1).mean() / (train_x.shape[1] - PCA_COMPONENTS)),
        max_distance=0.0,
        max_sharpness=high("sharpness") / MARGIN,
    )
    val_distances = gate.distances(val_features)
    cut = float(np.percentile(val_distances, 100 * (1 - VAL_FLAG_RATE)))
    gate = QualityGate(**{**gate.__dict__, "max_distance": cut})
    report = {
        "percentile": PERCENTILE,
        "margin": MARGIN,
        "fine_detail_margin": FINE_DETAIL_MARGIN,
        "pca_components": PCA_COMPONENTS,
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
        "ledoit_wolf_shrinkage": float(shrunk.shrinkage_),
        "val_flag_rate_target": VAL_FLAG_RATE,
        "train_distance_p50": float(np.median(gate.distances(train_features))),
        "val_distance_p50": float(np.median(val_distances)),
    }
    return gate, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.quality", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fit", "evaluate"))
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from . import data

    frame = data.load_dataset(args.data_dir)
    if args.command == "fit":
        from .explain import Companion

        # Fitted on the features the worker reads: the served companion file's (8-bit activations where the
        # served model is int8), not the Keras model's float ones.
        companion = Companion()
        gate, report = fit(companion, companion.version, frame)
        fitted = {"fitted_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
        gate.save(paths.MODELS_DIR / GATE_FILE_NAME, fitted)
        print(json.dumps({k: v for k, v in gate.__dict__.items() if np.ndim(v) == 0 or isinstance(v, str)} | fitted))
    else:
        from .quality_eval import evaluate

        evaluate(frame)


if __name__ == "__main__":
    main()
