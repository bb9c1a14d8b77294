"""Cached activations of the frozen lower blocks, for several augmented copies of every training image.

Fine-tuning only the upper blocks, the lower blocks compute the same thing every epoch: computing them
once per augmented copy and training the upper blocks on the stored activations makes an epoch several
times cheaper on a CPU. Copy 0 is the plain image; copies 1.. are random augmentations, seeded per
(image, copy) so a cache is reproducible and can be resumed part by part.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from ml.serve.preprocess import load_image, to_array
from ml.train.augment import AUGMENTATIONS

log = logging.getLogger(__name__)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _load(path: str, copy: int, index: int, seed: int, size: tuple[int, int], augmentation: str = "mild") -> np.ndarray:
    image = load_image(path)
    if copy > 0:
        image = AUGMENTATIONS[augmentation](image, np.random.default_rng([seed, copy, index]))
    return to_array(image, size)


def compute_activations(
    lower,
    paths: list[str],
    copy: int,
    seed: int,
    size: tuple[int, int],
    batch: int = 64,
    desc: str = "",
    augmentation: str = "mild",
) -> np.ndarray:
    out = None
    with ThreadPoolExecutor(max_workers=4) as pool:
        chunks = list(_batches(len(paths), batch))
        # Decode the next batch while the current one runs through the network.
        pending = pool.map(lambda i: _load(paths[i], copy, i, seed, size, augmentation), range(*chunks[0]))
        for n, (start, stop) in enumerate(tqdm(chunks, desc=desc, unit="batch", mininterval=10)):
            x = np.stack(list(pending))
            if n + 1 < len(chunks):
                pending = pool.map(lambda i: _load(paths[i], copy, i, seed, size, augmentation), range(*chunks[n + 1]))
            y = keras.ops.convert_to_numpy(lower(x, training=False)).astype(np.float16)
            if out is None:
                out = np.empty((len(paths), *y.shape[1:]), np.float16)
            out[start:stop] = y
    return out


def cached(
    lower,
    frame: pd.DataFrame,
    part: str,
    copy: int,
    seed: int,
    size: tuple[int, int],
    cache_dir: Path,
    augmentation: str = "mild",
) -> np.ndarray:
    """Activations of ``lower`` for one split part and copy, computed once and kept on disk."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_dir / f"{part}_copy{copy}.npy"
    if file.exists():
        return np.load(file, mmap_mode="r")
    paths = frame.loc[frame["split"] == part, "path"].tolist()
    log.info("caching %s copy %d (%d images) -> %s", part, copy, len(paths), file)
    acts = compute_activations(lower, paths, copy, seed, size, desc=f"{part} copy {copy}", augmentation=augmentation)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, acts)
    tmp.rename(file)  # a half-written cache file never looks finished
    return np.load(file, mmap_mode="r")


def cache_key(
    cut: str, size: tuple[int, int], seed: int, augmentation: str = "mild", colour_constancy: float | None = None
) -> str:
    """The cache folder's name: every setting the cached activations depend on (the mild augmentation and no
    colour constancy unnamed, as before either had a name)."""
    key = f"{cut}_{size[0]}x{size[1]}_seed{seed}" + ("" if augmentation == "mild" else f"_{augmentation}")
    return key + ("" if colour_constancy is None else f"_constancy{colour_constancy:g}")
