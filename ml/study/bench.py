"""Serving speed: ``python -m ml.study.bench`` prints p50/p95 ms per image at batch 1 and images/s at batch 32.

Three paths over the same model: LiteRT (the TFLite file the workers serve), a ``tf.function`` over the
Keras model, and Keras ``model.predict``. Warm-up calls are left out of the figures. Where the model is served
as int8 (its JSON's ``served_precision``), the LiteRT row is that int8 file and the other two compute in float.

The figures depend on the machine far more than on small model changes, int8 ones most: the shipped int8
file took 5.1 ms p50 at batch 1 on one session's 2-core machine, 15-17.5 ms on a later session's (a 2-core
AMD EPYC with AVX2 and no AVX-512) and 4.0 ms on the next (a 2-core Intel Xeon with AVX-512 VNNI and AMX), so
the CPU and its vector instruction sets are printed and stored with them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.inference import Classifier  # noqa: E402
from ml.train.timing import machine, timings  # noqa: E402


def bench(
    model: Path, repeats: int = 100, threads: int | None = None, include_keras: bool = True
) -> dict[str, dict[str, float]]:
    classifier = Classifier(model, num_threads=threads)
    rng = np.random.default_rng(0)
    one = rng.uniform(-1, 1, (1, *classifier.input_size, 3)).astype(np.float32)
    many = rng.uniform(-1, 1, (32, *classifier.input_size, 3)).astype(np.float32)
    paths_ = {"litert": classifier.predict_arrays}
    keras_file = model.with_suffix(".keras")
    if include_keras and keras_file.exists():
        import tensorflow as tf

        from ml.train.model import load

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        net = load(keras_file)
        fast = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
        paths_["tf.function"] = lambda x: fast(tf.constant(x)).numpy()
        paths_["keras.predict"] = lambda x: net.predict(x, verbose=0, batch_size=len(x))
    results = {}
    for name, fn in paths_.items():
        single = timings(fn, one, repeats if name != "keras.predict" else max(repeats // 4, 10)) * 1000
        batched = timings(fn, many, max(repeats // 10, 5))
        results[name] = {
            "batch1_p50_ms": float(np.percentile(single, 50)),
            "batch1_p95_ms": float(np.percentile(single, 95)),
            "batch32_images_per_s": float(32 / np.median(batched)),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, help="CPU threads per interpreter (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = bench(args.model, args.repeats, args.threads)
    cpu = machine()
    print(f"{args.model}: {cpu['cpu']}, {cpu['cores']} cores, {' '.join(cpu['instruction_sets']) or 'no AVX2'}")
    print(f"{'path':<14} {'batch 1 p50 ms':>15} {'batch 1 p95 ms':>15} {'batch 32 img/s':>15}")
    for name, r in results.items():
        print(f"{name:<14} {r['batch1_p50_ms']:>15.2f} {r['batch1_p95_ms']:>15.2f} {r['batch32_images_per_s']:>15.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu, **results}, indent=2))


if __name__ == "__main__":
    main()
