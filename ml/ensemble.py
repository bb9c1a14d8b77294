"""Serve several trained classifiers as one model: ``python -m ml.ensemble RUN.keras RUN.keras ... [--out DIR]``.

Members trained by ``ml.train`` with different seeds share their frozen lower blocks (the same ImageNet
weights, never trained), so the combined model runs those once and each member's fine-tuned upper blocks side
by side. Its last layer averages the members' logits: the members' last hidden vectors are concatenated and
one Dense softmax layer holds their output weights stacked and divided by their number. That keeps the
combined file a plain Keras graph with one ``probs`` layer: the operating point and temperature are chosen
on val and folded in exactly as for a single model (``ml.train.set_operating_point``), and it exports to
one TFLite file. Grad-CAM adds the members' maps and the quality gate reads the mean of their pooled
features (``ml.explain``).

Serving cost: the two-member ensemble shipped runs at about 1.6 times one network's time (the shared blocks
are 38% of the multiply-adds).
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from . import paths  # noqa: E402
from .calibrate import choose_on_val, load_raw, views_option  # noqa: E402
from .inference import ORIGINAL_ONLY  # noqa: E402
from .labels import CLASSES  # noqa: E402
from .model import layer_inputs, member_name, replay_after  # noqa: E402
from .train import save  # noqa: E402

log = logging.getLogger("ml.ensemble")


def combine(members: list[keras.Model], cut: str) -> keras.Model:
    """One Keras model averaging the logits of ``members`` (whose ``probs`` layers give raw logits).

    Layers up to and including ``cut`` are taken from the first member and must hold the same weights in
    every member; each member's later layers are copied under the name ``member<k>_<name>``.
    """
    first = members[0]
    names = [layer.name for layer in first.layers]
    index = names.index(cut)
    for other in members[1:]:
        for mine, theirs in zip(first.layers[: index + 1], other.layers[: index + 1], strict=True):
            same = mine.name == theirs.name or not mine.weights  # the input layers' names may differ
            if not same or any(
                not np.array_equal(a, b) for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True)
            ):
                raise ValueError(f"members differ below the cut, at {mine.name}: they cannot share it")
    shared = first.get_layer(cut).output
    hidden = [  # each member's copy of its layers up to the head, on the shared blocks' output
        replay_after(member, cut, shared, layer_inputs(member.get_layer("probs"))[0], partial(member_name, k))
        for k, member in enumerate(members)
    ]
    heads = [member.get_layer("probs").get_weights() for member in members]
    joined = layers.Concatenate(name="members")(hidden)
    probs = layers.Dense(len(CLASSES), activation="softmax", name="probs")
    out = probs(joined)
    probs.set_weights([np.concatenate([w for w, _ in heads]) / len(heads), np.mean([b for _, b in heads], axis=0)])
    return keras.Model(first.input, out, name="skinsite_mobilenetv2_ensemble")


def build(member_files: list[Path], data_dir: Path, out: Path, views=ORIGINAL_ONLY) -> dict:
    """Combine the members, choose the operating point on val over the test-time ``views``, save as ``skinsite``."""
    loaded = [load_raw(f) for f in member_files]
    metas = [meta for _, meta in loaded]
    recipes = [meta["recipe"] for meta in metas]
    for key in ("cut", "input_size"):
        if len({str(r[key]) for r in recipes}) > 1:
            raise ValueError(f"members differ in {key}: {[r[key] for r in recipes]}")
    model = combine([m for m, _ in loaded], recipes[0]["cut"])
    result: dict = {
        "recipe": recipes[0] | {"name": "ensemble"},
        "members": [
            {
                "file": f.name,
                "version": meta["version"],
                "recipe": meta["recipe"],
                "kept_epoch": meta.get("kept_epoch"),
                "train_seconds": meta["train_seconds"],
                "history": meta["history"],
                "val": {k: meta["val"][k] for k in ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")},
            }
            for f, meta in zip(member_files, metas, strict=True)
        ],
        "train_seconds": round(sum(meta["train_seconds"] for meta in metas), 1),
        "data_dir": str(data_dir),
        "images": metas[0]["images"],
    }
    result.update(choose_on_val(model, result["recipe"], data_dir, views))
    return save(model, out, "skinsite", result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("members", type=Path, nargs="+", help="the members' .keras files (JSON beside each)")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--out", type=Path, default=paths.MODELS_DIR)
    parser.add_argument(
        "--views", type=views_option, default=list(ORIGINAL_ONLY), help="test-time views, comma-separated"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(args.members) < 2:
        parser.error("an ensemble needs at least two members")
    result = build(args.members, args.data_dir, args.out, args.views)
    v = result["val"]
    print(
        f"{result['version']}: val accuracy {v['accuracy']:.4f}, balanced accuracy {v['balanced_accuracy']:.4f}, "
        f"macro AUC {v['macro_auc']:.4f}, melanoma recall {v['melanoma_recall']:.4f}"
    )


if __name__ == "__main__":
    main()
