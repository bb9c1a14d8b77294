"""``python -m ml.study.explain``: one image's Grad-CAM overlay, or the explainer's time and memory per image (--bench).

The explainer itself (what a worker runs) is ml/serve/explainer.py; this command reads HAM10000 test images and may
write its figures into ``metrics.json`` and the model card (``--record``), which a worker never does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.serve.explainer import Explainer, get_explainer
from ml.serve.labels import CLASSES
from ml.serve.preprocess import ImageSource, load_image, to_array


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
    parser = argparse.ArgumentParser(prog="python -m ml.study.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true", help="time explain() on HAM10000 test images and print RSS")
    parser.add_argument("--images", type=int, default=20, help="how many test images to time (--bench)")
    parser.add_argument("--json", type=Path, help="also write the bench figures here")
    parser.add_argument("--record", action="store_true", help="store the bench figures in metrics.json and the card")
    parser.add_argument("source", nargs="?", type=Path, help="an image: writes <name>.gradcam.png beside --out")
    parser.add_argument("--class-index", type=int, help="the class to explain (default: the predicted one)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the overlay PNG")
    args = parser.parse_args(argv)
    if args.bench:
        from ml.train import data

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
            from ml.study.card import update_metrics

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
