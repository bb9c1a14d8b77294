"""Training batches for whole-network training (``ml.train --recipe whole``): the train images decoded once into
memory, then every epoch a fresh class-balanced draw of them, each image augmented anew (``ml.train.augment``).

Everything random in an epoch follows from (seed, epoch) and, for an image's augmentation, its place in the
epoch's draw: an epoch can be drawn again exactly after a restart (``ml.train --resume``), and the images are
augmented on worker threads in any order without changing what a batch holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ml.serve.labels import CLASSES
from ml.serve.preprocess import load_image, to_array
from ml.train.augment import AUGMENTATIONS


def decode(paths) -> list[np.ndarray]:
    """Every image as upright RGB uint8 pixels (HAM10000's 200x150 are about 90 kB each)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda p: np.asarray(load_image(p)), paths))


def sampling_probabilities(labels: np.ndarray, power: float) -> np.ndarray:
    """Per image, the probability of being drawn: proportional to n_class ** -power, summing to 1."""
    counts = np.maximum(np.bincount(labels, minlength=len(CLASSES)), 1).astype(float)
    weights = counts[labels] ** -power
    return weights / weights.sum()


def class_shares(labels: np.ndarray, power: float) -> np.ndarray:
    """The share of each class among the images drawn (what the network sees as its prior)."""
    return np.bincount(labels, weights=sampling_probabilities(labels, power), minlength=len(CLASSES))


def epoch_draw(labels: np.ndarray, count: int | None, power: float, seed: int, epoch: int) -> np.ndarray:
    """The indices of one epoch's images, in training order: ``count`` (default: all) drawn with replacement
    by :func:`sampling_probabilities`, or, for power 0 and no count, each image once in a random order."""
    rng = np.random.default_rng([seed, epoch])
    if power == 0 and count is None:
        return rng.permutation(len(labels))
    return rng.choice(len(labels), size=count or len(labels), p=sampling_probabilities(labels, power))


def augmented(pixels: np.ndarray, size, augmentation: str, seed: int, epoch: int, position: int) -> np.ndarray:
    """One image's input array for the ``position``-th draw of ``epoch``."""
    rng = np.random.default_rng([seed, epoch, position])
    image = AUGMENTATIONS[augmentation](Image.fromarray(pixels), rng, size)
    return to_array(image, size)


def batches(
    images: list[np.ndarray],
    order: np.ndarray,
    batch_size: int,
    size: tuple[int, int],
    augmentation: str,
    seed: int,
    epoch: int,
    threads: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input arrays, their indices into ``images``) for each batch of ``order``; the next batch is augmented on
    ``threads`` worker threads while the current one trains (Pillow releases the interpreter lock for its work)."""
    starts = range(0, len(order), batch_size)

    def make(start: int) -> list:
        positions = range(start, min(start + batch_size, len(order)))
        return [pool.submit(augmented, images[order[p]], size, augmentation, seed, epoch, p) for p in positions]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = make(starts[0]) if starts else []
        for n, start in enumerate(starts):
            current = pending
            if n + 1 < len(starts):
                pending = make(starts[n + 1])
            yield np.stack([f.result() for f in current]), order[start : start + batch_size]
