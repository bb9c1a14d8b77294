"""Why the model said what it said, and whether to trust it: Grad-CAM heatmaps and the quality gate.

What a worker runs for every image. One LiteRT call on the served model's companion file
(``ml.export.write_explainer``) gives the probabilities and each member network's last convolutional
activations (``out_relu``); the Grad-CAM of the predicted class follows from those and the head's weights in
closed form (``ml.gradcam``), and the quality gate (``ml.quality``) reads their average (the pooled features).
Neither TensorFlow nor Keras is imported here: ``ml.keras_gradcam`` is the Keras reference the tests hold this to.
Loaded once per process (:func:`get_explainer`). ``python -m ml.explain --bench`` prints the time per image and
the process's resident memory.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import paths
from .gradcam import Head
from .inference import LiteModel, Prediction, model_metadata, prediction_of
from .labels import CLASSES
from .preprocess import ImageSource, load_image, to_array
from .quality import GATE_FILE_NAME, QualityGate

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

    feature_source = "litert-companion"  # the gate's feature cache is kept per kind of features (ml.quality)

    def __init__(self, model_path: str | Path | None = None, num_threads: int | None = None):
        self.model_path = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".tflite")
        meta = model_metadata(self.model_path)
        self.version: str = meta["version"]
        self.input_size: tuple[int, int] = tuple(meta["input_size"])
        entry = meta.get("explainer")
        if not entry:
            raise FileNotFoundError(
                f"{self.model_path.name} has no companion file for Grad-CAM: run `python -m ml.export`"
            )
        folder = self.model_path.parent
        for name in (entry["file"], entry["head"]):
            if meta["files"].get(name) != hashlib.sha256((folder / name).read_bytes()).hexdigest():
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
                f"the quality gate was fitted for {self.gate.model_version}, not {version}: run `python -m ml.quality fit`"
            )
        self.companion = Companion(model_path, num_threads)
        self.version, self.input_size = self.companion.version, self.companion.input_size

    def explain(self, source: ImageSource, class_index: int | None = None) -> Explanation:
        """The prediction, the Grad-CAM of ``class_index`` (an index into ``ml.labels.CLASSES``; default: the
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


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench(images: list[ImageSource], repeats: int = 3) -> dict[str, float]:
    """Load time, resident memory before and after loading, and ms per ``explain`` call (warm-up left out)."""
    import sys

    rss_before = resident_mb()
    start = time.perf_counter()
    explainer = Explainer()
    explainer.explain(images[0])  # the first call allocates the interpreter's tensors
    load_s = time.perf_counter() - start
    rss_loaded = resident_mb()
    times, model_times = [], []
    for _ in range(repeats):
        for i, image in enumerate(images):
            start = time.perf_counter()
            explainer.explain(image, i % len(CLASSES))
            times.append(time.perf_counter() - start)
            # The model call alone (what the prediction costs anyway), to tell the explanation's own share.
            array = to_array(load_image(image), explainer.input_size)[None]
            start = time.perf_counter()
            explainer.companion.outputs(array)
            model_times.append(time.perf_counter() - start)
    ms, model_ms = np.asarray(times) * 1000, np.asarray(model_times) * 1000
    return {
        "images": len(times),
        "load_seconds": load_s,
        "rss_mb_before_load": rss_before,
        "rss_mb_after_load": rss_loaded,
        "rss_mb_after_bench": resident_mb(),
        "ms_per_image_p50": float(np.percentile(ms, 50)),
        "ms_per_image_p95": float(np.percentile(ms, 95)),
        "model_call_ms_p50": float(np.percentile(model_ms, 50)),
        "cpu_count": os.cpu_count(),
        "tensorflow_imported": "tensorflow" in sys.modules or "keras" in sys.modules,
        "model_version": explainer.version,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true", help="time explain() on HAM10000 test images and print RSS")
    parser.add_argument("--images", type=int, default=20, help="how many test images to time (--bench)")
    parser.add_argument("--json", type=Path, help="also write the bench figures here")
    parser.add_argument("--record", action="store_true", help="store the bench figures in metrics.json and the card")
    parser.add_argument("source", nargs="?", type=Path, help="an image: writes <name>.gradcam.png beside --out")
    parser.add_argument("--class-index", type=int, help="the class to explain (default: the predicted one)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the overlay PNG")
    args = parser.parse_args(argv)
    if args.bench:
        from . import data

        test = data.part(data.load_dataset(paths.DATA_DIR), "test")
        files = test["path"].iloc[:: max(len(test) // args.images, 1)].iloc[: args.images].tolist()
        figures = bench(files)
        print(
            f"explain(): p50 {figures['ms_per_image_p50']:.1f} ms, p95 {figures['ms_per_image_p95']:.1f} ms per image "
            f"over {figures['images']} calls, of which the model call (the prediction's) p50 "
            f"{figures['model_call_ms_p50']:.1f} ms; load and first call {figures['load_seconds']:.2f} s; RSS "
            f"{figures['rss_mb_before_load']:.0f} MiB before loading, {figures['rss_mb_after_load']:.0f} MiB after "
            f"loading the companion file and gate, {figures['rss_mb_after_bench']:.0f} MiB after the calls "
            f"({figures['cpu_count']} CPUs; TensorFlow imported: {figures['tensorflow_imported']})"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        if args.record:
            from .evaluate import update_metrics

            update_metrics(paths.MODELS_DIR, "explain", figures)
        return
    if not args.source:
        parser.error("give an image, or --bench")
    explanation = get_explainer().explain(args.source, args.class_index)
    out = args.out / f"{args.source.stem}.gradcam.png"
    explanation.overlay.save(out)
    index = CLASSES.index(explanation.prediction.predicted_class) if args.class_index is None else args.class_index
    print(f"class {CLASSES[index]}: wrote {out}; quality flags: {explanation.quality_flags or 'none'}")


if __name__ == "__main__":
    main()
