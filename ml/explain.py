"""Why the model said what it said, and whether to trust it: Grad-CAM heatmaps and the quality gate.

A worker runs this after the fast LiteRT prediction (``ml.inference``). One forward and backward pass of the
Keras model gives both the Grad-CAM of the predicted class (on MobileNetV2's last convolutional activations,
``out_relu``) and the pooled features that the out-of-distribution half of the gate (``ml.quality``) reads.

TensorFlow is imported inside :class:`Explainer`, never at module import: only workers and ``ml`` commands
create one, once per process (:func:`get_explainer`). ``python -m ml.explain --bench`` prints the time per
image and the process's resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import paths
from .inference import model_metadata
from .labels import CLASSES
from .preprocess import ImageSource, load_image, to_array
from .quality import GATE_FILE_NAME, QualityGate

# Constant-weight blending keeps the image readable under the colour; inferno's lightness rises monotonically
# from black to pale yellow, so "hot" stays the lightest part of the overlay in greyscale print too.
OVERLAY_ALPHA = 0.45
COLORMAP = "inferno"


@dataclass(frozen=True)
class Explanation:
    heatmap: np.ndarray  # float32 (H, W) in [0, 1]; H, W = the image's size after EXIF transpose
    overlay: Image.Image  # RGB, same size: the heatmap blended over the image
    quality_flags: list[str]  # plain-language reasons the image may not be a dermoscopic lesion image; [] = passes


@functools.cache
def _colormap_lut() -> np.ndarray:
    """(256, 3) uint8 lookup table of the colormap (matplotlib is imported once, on first use)."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


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


class GradCam:
    """Grad-CAM and pooled features of a Keras classifier built by ``ml.model.build_classifier`` or ``ml.ensemble``.

    The class score is the logit of the last Dense layer (before softmax): gradients of a softmax output
    vanish where the model is confident, which would blank the map exactly for the clearest images.
    """

    def __init__(self, model, input_size: tuple[int, int]):
        import keras
        import tensorflow as tf

        from .model import LAST_CONV_LAYER, member_layers  # ml.model imports Keras at module level

        self.input_size = input_size
        head = model.get_layer("probs")
        # One model, or an ensemble (ml.ensemble) with one last convolution and one pooling layer per member.
        convs = [layer.output for layer in member_layers(model, LAST_CONV_LAYER)]
        pools = [layer.output for layer in member_layers(model, "pool")]
        net = keras.Model(model.input, [convs, pools, head.input])
        kernel, bias = head.kernel, head.bias

        @tf.function(
            input_signature=[tf.TensorSpec((1, *input_size, 3), tf.float32), tf.TensorSpec((), tf.int32)],
            jit_compile=False,
        )
        def cam(x, class_index):
            with tf.GradientTape() as tape:
                activations, pooled, hidden = net(x, training=False)
                logits = tf.matmul(hidden, kernel) + bias
                score = logits[0, class_index]
            grads = tape.gradient(score, activations)
            # Per member, one weight per channel (its average gradient); an ensemble's members add up, since its
            # class score is the sum of theirs (divided by their number, folded into the head's weights).
            linear = tf.add_n(
                [
                    tf.einsum("bhwc,bc->bhw", a, tf.reduce_mean(g, axis=(1, 2)))
                    for a, g in zip(activations, grads, strict=True)
                ]
            )
            return tf.nn.relu(linear)[0], tf.add_n(pooled)[0] / len(pooled), tf.nn.softmax(logits)[0]

        features_net = keras.Model(model.input, pools)

        @tf.function(reduce_retracing=True)
        def features(x):
            pooled = features_net(x, training=False)
            return tf.add_n(pooled) / len(pooled)

        self._cam, self._features = cam, features
        self._tf = tf
        self._lock = threading.Lock()  # tf.function calls are thread-safe, but one at a time keeps memory flat

    def __call__(self, array: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One preprocessed (h, w, 3) array -> (coarse CAM (h/32, w/32), pooled features (1280,), probabilities)."""
        with self._lock:
            heat, pooled, probs = self._cam(
                self._tf.constant(array[None]), self._tf.constant(class_index, self._tf.int32)
            )
        return heat.numpy(), pooled.numpy(), probs.numpy()

    def pooled_features(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) preprocessed arrays -> (n, 1280) pooled features, for fitting and evaluating the gate."""
        with self._lock:
            return self._features(self._tf.constant(batch)).numpy()


def _limit_tensorflow_threads() -> None:
    """Give TensorFlow the thread budget the LiteRT interpreter gets (SKINSITE_INFERENCE_THREADS): several worker
    processes on a small machine each taking every core slow each other down."""
    import tensorflow as tf

    threads = int(os.environ.get("SKINSITE_INFERENCE_THREADS", 0))
    if threads:
        with contextlib.suppress(RuntimeError):  # too late once TensorFlow has run something in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_grad_cam(model_path: str | Path | None = None) -> tuple[GradCam, str]:
    """The Keras twin of a served model (``skinsite.keras`` beside ``skinsite.tflite``) and its version, warmed up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .model import load

    _limit_tensorflow_threads()
    keras_file = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".keras")
    meta = model_metadata(keras_file)
    grad_cam = GradCam(load(keras_file, compile=False), tuple(meta["input_size"]))
    # The first call traces the graph and allocates (seconds): pay it here, not in the first analysis.
    grad_cam(np.zeros((*grad_cam.input_size, 3), np.float32), 0)
    return grad_cam, meta["version"]


class Explainer:
    """The shipped Keras model and the gate statistics fitted for it, loaded once."""

    def __init__(self, model_path: str | Path | None = None, *, gate_path: str | Path | None = None):
        self.model_path = Path(model_path or paths.SHIPPED_MODEL).with_suffix(".keras")
        self.gate = QualityGate.load(Path(gate_path) if gate_path else self.model_path.parent / GATE_FILE_NAME)
        version = model_metadata(self.model_path)["version"]
        if self.gate.model_version != version:
            # Statistics of another model's features would flag at random: refuse before loading anything heavy.
            raise ValueError(
                f"the quality gate was fitted for {self.gate.model_version}, not {version}: "
                "run `python -m ml.quality fit`"
            )
        self.grad_cam, self.version = load_grad_cam(self.model_path)
        self.input_size = self.grad_cam.input_size

    def explain(self, source: ImageSource, class_index: int) -> Explanation:
        """Grad-CAM of ``class_index`` (an index into ``ml.labels.CLASSES``) and the quality gate's verdict."""
        if not 0 <= class_index < len(CLASSES):
            raise ValueError(f"class_index {class_index}: the model has {len(CLASSES)} classes")
        image = load_image(source)
        heat, pooled, _ = self.grad_cam(to_array(image, self.input_size), int(class_index))
        heatmap = upsample(heat, image.size)
        return Explanation(
            heatmap=heatmap,
            overlay=overlay_heatmap(image, heatmap),
            quality_flags=self.gate.check(image, pooled),
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
    """Load time, resident memory after loading, and ms per ``explain`` call (warm-up left out)."""
    rss_before = resident_mb()
    import keras  # noqa: F401  (imports TensorFlow: measured apart from the model)

    rss_tensorflow = resident_mb()
    start = time.perf_counter()
    explainer = Explainer()
    load_s = time.perf_counter() - start
    rss_loaded = resident_mb()
    explainer.explain(images[0], 0)  # a second warm-up, through the whole path
    times = []
    for _ in range(repeats):
        for i, image in enumerate(images):
            start = time.perf_counter()
            explainer.explain(image, i % 7)
            times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    return {
        "images": len(times),
        "load_seconds": load_s,
        "rss_mb_before_load": rss_before,
        "rss_mb_after_tensorflow_import": rss_tensorflow,
        "rss_mb_after_load": rss_loaded,
        "rss_mb_after_bench": resident_mb(),
        "ms_per_image_p50": float(np.percentile(ms, 50)),
        "ms_per_image_p95": float(np.percentile(ms, 95)),
        "cpu_count": os.cpu_count(),
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
            f"over {figures['images']} calls; load {figures['load_seconds']:.1f} s; RSS {figures['rss_mb_before_load']:.0f} "
            f"MiB before loading, {figures['rss_mb_after_tensorflow_import']:.0f} MiB after importing TensorFlow, "
            f"{figures['rss_mb_after_load']:.0f} MiB after loading the model and gate, {figures['rss_mb_after_bench']:.0f} MiB "
            f"after the calls ({figures['cpu_count']} CPUs)"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        if args.record:
            from .evaluate import update_metrics

            update_metrics(paths.MODELS_DIR, "explain", figures)
        return
    if not args.source:
        parser.error("give an image, or --bench")
    explainer = get_explainer()
    index = args.class_index
    if index is None:
        _, _, probs = explainer.grad_cam(to_array(load_image(args.source), explainer.input_size), 0)
        index = int(np.argmax(probs))
    explanation = explainer.explain(args.source, index)
    out = args.out / f"{args.source.stem}.gradcam.png"
    explanation.overlay.save(out)
    print(f"class {index}: wrote {out}; quality flags: {explanation.quality_flags or 'none'}")


if __name__ == "__main__":
    main()
