"""Fitting the quality gate on HAM10000: thresholds on the train images' statistics, a feature model, a distance cut.

The gate that a worker runs is ml/serve/quality_gate.py; ``python -m ml.study.quality fit`` (ml/study/quality.py) calls :func:`fit` and
writes its file. :func:`extract` and :func:`cached_extract` read the statistics and pooled features of many images,
for the fit and for the evaluation (ml/study/quality_eval.py) alike.
"""

from __future__ import annotations

import logging

import numpy as np

from ml.serve import paths
from ml.serve.quality_gate import STAT_NAMES, QualityGate, image_stats, transform

log = logging.getLogger("ml.study.quality")


def extract(extractor, images: list, batch: int = 32, desc: str = "") -> tuple[list[dict[str, float]], np.ndarray]:
    """Image statistics and pooled features of many images (paths or PIL images), batched."""
    from concurrent.futures import ThreadPoolExecutor

    from ml.serve.preprocess import load_image, to_array

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
