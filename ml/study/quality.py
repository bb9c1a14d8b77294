"""``python -m ml.study.quality fit`` fits the quality gate; ``python -m ml.study.quality evaluate`` measures it.

``fit`` (ml/train/quality_fit.py) writes ``quality_gate.npz`` beside the model; ``evaluate`` (ml/study/quality_eval.py) writes the
fraction of HAM10000 test images wrongly flagged and, per category, of non-dermoscopic images flagged into
``metrics.json`` and the model card. The gate itself, what a worker runs, is ml/serve/quality_gate.py.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.serve.explainer import Companion
from ml.serve.quality_gate import GATE_FILE_NAME
from ml.study.quality_eval import evaluate
from ml.train import data
from ml.train.quality_fit import fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.quality", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fit", "evaluate"))
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    frame = data.load_dataset(args.data_dir)
    if args.command == "fit":
        # Fitted on the features the worker reads: the served companion file's (8-bit activations where the
        # served model is int8), not the Keras model's float ones.
        companion = Companion()
        gate, report = fit(companion, companion.version, frame)
        fitted = {"fitted_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
        gate.save(paths.MODELS_DIR / GATE_FILE_NAME, fitted)
        print(json.dumps({k: v for k, v in gate.__dict__.items() if np.ndim(v) == 0 or isinstance(v, str)} | fitted))
    else:
        evaluate(frame)


if __name__ == "__main__":
    main()
