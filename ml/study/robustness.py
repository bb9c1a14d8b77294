"""How the served model's answers hold up when a picture is taken differently: ``python -m ml.study.robustness``.

The shipped model will meet dermatoscopes, lights and cameras that HAM10000 does not hold, and there are no such
images here. So this changes every HAM10000 test image the way another acquisition might (the colour of the
light, exposure, contrast, saturation, compression, resolution, focus, orientation) and measures the served
file on each changed copy of the whole test part, at its served operating point: accuracy, balanced accuracy,
macro AUC, melanoma recall, and the share of answers that differ from those on the unchanged images.

Nothing is chosen on the test figures: they say how far the card's test figures carry away from HAM10000's own
acquisition, and which kind of change to guard against next (in training, or with the quality gate). They go
into metrics.json (``robustness``) and the model card. ``--part val`` measures val instead, where models may
be compared on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ml.serve import paths
from ml.serve.inference import Classifier
from ml.serve.preprocess import load_image, preprocess
from ml.train import data
from ml.train.augment import channel_gains, fewer_pixels, jpeg
from ml.train.metrics import summary


def enhanced(kind, factor: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: kind(image).enhance(factor)


# Mild changes, each within what one clinic's equipment differs from another's; the unchanged images first.
CHANGES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "unchanged": lambda image: image,
    "warmer light (red x1.1, blue x0.9)": lambda image: channel_gains(image, (1.1, 1.0, 0.9)),
    "cooler light (red x0.9, blue x1.1)": lambda image: channel_gains(image, (0.9, 1.0, 1.1)),
    "greener (green x1.1)": lambda image: channel_gains(image, (1.0, 1.1, 1.0)),
    "darker (x0.8)": enhanced(ImageEnhance.Brightness, 0.8),
    "brighter (x1.2)": enhanced(ImageEnhance.Brightness, 1.2),
    "less contrast (x0.8)": enhanced(ImageEnhance.Contrast, 0.8),
    "more contrast (x1.2)": enhanced(ImageEnhance.Contrast, 1.2),
    "less saturated (x0.7)": enhanced(ImageEnhance.Color, 0.7),
    "more saturated (x1.3)": enhanced(ImageEnhance.Color, 1.3),
    "JPEG quality 40": lambda image: jpeg(image, 40),
    "half the resolution (shrunk 2x, enlarged back)": lambda image: fewer_pixels(image, 2),
    "slightly out of focus (Gaussian radius 1 px)": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
    "enlarged to 600x450 (the originals' size)": lambda image: image.resize((600, 450), Image.BICUBIC),
    "mirrored": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotated 90 degrees (portrait)": lambda image: image.transpose(Image.Transpose.ROTATE_90),
}
FIGURES = ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")


def measure(model: Path, data_dir: Path, part: str = "test", chunk: int = 32) -> dict:
    """The served model's figures on every changed copy of ``part``; each image is read once, and each chunk
    of images goes through the model as one batch per change."""
    classifier = Classifier(model)
    frame = data.part(data.load_dataset(data_dir), part)
    y = frame["label"].to_numpy()
    probs = {name: [] for name in CHANGES}
    files = frame["path"].tolist()
    for start in range(0, len(files), chunk):
        images = [load_image(f) for f in files[start : start + chunk]]
        for name, change in CHANGES.items():
            arrays = np.stack([preprocess(change(image), classifier.input_size) for image in images])
            probs[name].append(classifier.predict_arrays(arrays))
    answers = np.concatenate(probs["unchanged"]).argmax(axis=1)
    rows = []
    for name in CHANGES:
        p = np.concatenate(probs[name])
        figures = summary(y, p)
        rows.append(
            {
                "change": name,
                **{k: figures[k] for k in FIGURES},
                "answers_changed": float((p.argmax(axis=1) != answers).mean()),
            }
        )
    return {"model_version": classifier.version, "part": part, "n": int(len(y)), "changes": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.robustness", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL, help="the served TFLite file")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--part", choices=("test", "val"), default="test", help="val: to compare models on")
    parser.add_argument(
        "--record", action="store_true", help="store the figures in metrics.json beside the model and render its card"
    )
    args = parser.parse_args(argv)
    if args.record and args.part != "test":
        parser.error("--record stores the test part's figures (the card's)")
    result = measure(args.model, args.data_dir, args.part)
    print(f"{result['model_version']} on {result['n']} {result['part']} images")
    print(f"{'change':48s} {'acc':>6s} {'bal':>6s} {'auc':>6s} {'mel':>6s} {'changed':>8s}")
    for r in result["changes"]:
        print(
            f"{r['change']:48s} {r['accuracy']:6.3f} {r['balanced_accuracy']:6.3f} {r['macro_auc']:6.3f} "
            f"{r['melanoma_recall']:6.3f} {r['answers_changed']:8.1%}"
        )
    if args.record:
        from ml.study.card import update_metrics

        update_metrics(args.model.parent, "robustness", result)


if __name__ == "__main__":
    main()
