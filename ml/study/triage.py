"""``python -m ml.study.triage fit``: fit the risk tiers (ml/train/triage.py) and record them.

Writes ``triage.json`` beside the model (what ml/serve/tiers.py reads), the ``triage`` section of metrics.json and
the model card's section on it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ml.serve import paths
from ml.serve.tiers import TRIAGE_FILE_NAME
from ml.study.card import update_metrics
from ml.train.triage import fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.triage", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fit",))
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    args = parser.parse_args(argv)
    triage = fit(args.models_dir)
    (args.models_dir / TRIAGE_FILE_NAME).write_text(json.dumps(asdict(triage), indent=2) + "\n")
    update_metrics(args.models_dir, "triage", triage.describe())
    for part in ("val", "test"):
        figures = getattr(triage, part)
        u, uu = figures["urgent"], figures["urgent_or_uncertain"]
        print(
            f"{part}: tiers {figures['tier_counts']}; urgent: melanoma sensitivity "
            f"{u['melanoma_sensitivity']['value']:.3f}, specificity {u['melanoma_specificity']['value']:.3f}, malignant "
            f"{u['malignant_sensitivity']['value']:.3f}/{u['malignant_specificity']['value']:.3f}; urgent or uncertain: "
            f"melanoma {uu['melanoma_sensitivity']['value']:.3f}/{uu['melanoma_specificity']['value']:.3f}, malignant "
            f"{uu['malignant_sensitivity']['value']:.3f}/{uu['malignant_specificity']['value']:.3f}"
        )
    print(f"urgent >= {triage.urgent_threshold:.4f}, routine < {triage.routine_threshold:.4f}")


if __name__ == "__main__":
    main()
