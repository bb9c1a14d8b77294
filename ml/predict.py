"""Batch prediction: ``python -m ml.predict [--model PATH] [--batch-size N] --out preds.csv PATH...``.

Each PATH is an image file or a folder of images. The CSV has one row per image: ``image`` (the file name
without extension), then the probabilities of akiec, bcc, bkl, df, mel, nv, vasc, summing to 1.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from ml.serve import paths
from ml.serve.inference import Classifier
from ml.serve.labels import CLASSES
from ml.serve.preprocess import preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def predict_files(
    files: list[Path], classifier: Classifier, batch_size: int = 32, on_error=None
) -> tuple[list[Path], np.ndarray]:
    """Probabilities for every readable file, in order; unreadable ones are passed to ``on_error`` and skipped."""

    def load(path: Path):
        try:
            return preprocess(path, classifier.input_size)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            if on_error:
                on_error(path, error)
            return None

    kept, out = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            arrays = list(pool.map(load, chunk))
            good = [(p, a) for p, a in zip(chunk, arrays) if a is not None]
            if good:
                kept.extend(p for p, _ in good)
                out.append(classifier.predict_arrays(np.stack([a for _, a in good])))
    probs = np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)
    return kept, probs


def write_csv(out: Path, files: list[Path], probs: np.ndarray) -> None:
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *CLASSES])
        for path, row in zip(files, probs.astype(np.float64)):
            row = row / row.sum()
            writer.writerow([path.stem, *(f"{p:.8f}" for p in row)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.predict", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="image files or folders of images")
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL, help="a .tflite file (default: shipped)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        files = expand(args.paths)
    except FileNotFoundError as error:
        parser.error(str(error))
    failed = []

    def report(path, error):
        failed.append(path)
        print(f"skipped {path}: not a readable image ({error})", file=sys.stderr)

    kept, probs = predict_files(files, Classifier(args.model), args.batch_size, on_error=report)
    write_csv(args.out, kept, probs)
    print(f"wrote {len(kept)} rows to {args.out}" + (f"; {len(failed)} unreadable files skipped" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
