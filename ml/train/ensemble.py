"""Serve several trained classifiers as one model: ``python -m ml.train.ensemble RUN.keras RUN.keras ... [--out DIR]``.

Members trained by ``ml.train.fit`` with different seeds share their frozen lower blocks (the same ImageNet
weights, never trained), so the combined model runs those once and each member's fine-tuned upper blocks side
by side. Its last layer averages the members' logits: the members' last hidden vectors are concatenated and
one Dense softmax layer holds their output weights stacked and divided by their number. That keeps the
combined file a plain Keras graph with one ``probs`` layer: the operating point and temperature are chosen
on val and folded in exactly as for a single model (``ml.train.fit.set_operating_point``), and it exports to
one TFLite file. Grad-CAM adds the members' maps and the quality gate reads the mean of their pooled
features (``ml.serve.explainer``).

A member file may itself be an ensemble: its networks join one by one, so a new network is added to the
shipped ones with ``python -m ml.train.ensemble ml/models/skinsite.keras ml/runs/member2/skinsite.keras``, and
``python -m ml.train.ensemble ml/models/skinsite.keras`` alone builds the shipped networks again (for example to
store an older float32 ensemble in half precision, which the operating point is then chosen for). The result
is served as the first member file is (int8 or float) unless ``--int8`` or ``--no-int8`` says otherwise.

Serving cost grows by about 0.6 of one network's time per network (the shared blocks are 38% of the
multiply-adds): measured with LiteRT at batch 1, p50, in one interleaved run, one network took 5.4 ms, two
8.8 ms, three 12.3 ms and four 15.5 ms. Machines differ a lot: ``python -m ml.study.bench`` gave the three networks
8.99 ms p50 on one session's 2-core machine and 16-25 ms on a later session's (float32 and float16 files alike,
interleaved), which is over the 15 ms budget. An int8 file of the three networks (``python -m ml.train.quantize``)
ranked val as well (raw macro AUC 0.950 against 0.949) in about half the time (7.4 against 12.9 ms p50, timed
in turn), changing 4% of the answers (ml/models/quantization.json). ``--int8`` serves such a file: the
operating point is chosen on its own val outputs, so the recorded figures are the served file's; Grad-CAM and
the quality gate's features still come from the Keras file, which computes in float.
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from itertools import zip_longest
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.inference import ORIGINAL_ONLY  # noqa: E402
from ml.serve.labels import CLASSES  # noqa: E402
from ml.train.calibrate import choose_on_val, int8_calibration, load_raw, save_served, views_option  # noqa: E402
from ml.train.export import round_to_half  # noqa: E402
from ml.train.model import layer_inputs, member_name, replay_after  # noqa: E402

log = logging.getLogger("ml.train.ensemble")


def networks(model: keras.Model) -> list[tuple[str, object, np.ndarray, np.ndarray]]:
    """The networks in ``model`` (one, or each member of an ensemble): per network, the layer holding its last
    hidden vector, how to name a copy of one of its layers as member ``k``, and its raw output weights and bias.

    An ensemble's last layer holds its members' output weights divided by their number and the mean of their
    biases: giving each member that mean bias keeps the mean of all biases right when ensembles are combined.
    """
    probs = model.get_layer("probs")
    kernel, bias = probs.get_weights()
    (source,) = layer_inputs(probs)
    if source != "members":
        return [(source, member_name, kernel, bias)]
    hidden = layer_inputs(model.get_layer("members"))
    rows = np.split(kernel, np.cumsum([model.get_layer(h).output.shape[-1] for h in hidden])[:-1])

    def renamed(i):  # member i's copy of layer ``name`` becomes member k's
        return lambda k, name: member_name(k, name.removeprefix(member_name(i, "")))

    return [(h, renamed(i), w * len(hidden), bias) for i, (h, w) in enumerate(zip(hidden, rows, strict=True))]


def combine(members: list[keras.Model], cut: str) -> keras.Model:
    """One Keras model averaging the logits of every network in ``members`` (whose ``probs`` layers give raw
    logits); a member may itself be an ensemble, whose networks then count one by one.

    Layers up to and including ``cut`` are taken from the first member and must hold the same weights in
    every member; each network's later layers are copied under the name ``member<k>_<name>``.
    """
    first = members[0]
    names = [layer.name for layer in first.layers]
    index = names.index(cut)
    for other in members[1:]:
        # Layer by layer after the input (whose name may differ): the same layers, in order, with the same weights.
        for mine, theirs in zip_longest(first.layers[1 : index + 1], other.layers[1 : index + 1]):
            if (
                theirs is None
                or mine.name != theirs.name
                or any(not np.array_equal(a, b) for a, b in zip_longest(mine.get_weights(), theirs.get_weights()))
            ):
                raise ValueError(f"members differ below the cut, at {mine.name}: they cannot share it")
    shared = first.get_layer(cut).output
    hidden, heads = [], []
    for member in members:
        for last, rename, kernel, bias in networks(member):
            # this network's copy of its layers up to its last hidden vector, on the shared blocks' output
            hidden.append(replay_after(member, cut, shared, last, partial(rename, len(heads))))
            heads.append((kernel, bias))
    joined = layers.Concatenate(name="members")(hidden)
    probs = layers.Dense(len(CLASSES), activation="softmax", name="probs")
    out = probs(joined)
    probs.set_weights([np.concatenate([w for w, _ in heads]) / len(heads), np.mean([b for _, b in heads], axis=0)])
    return keras.Model(first.input, out, name="skinsite_mobilenetv2_ensemble")


def combine_rounded(members: list[keras.Model], cut: str) -> keras.Model:
    """:func:`combine` with every weight rounded to float16: each member's first, so that a float32 member shares
    the others' rounded lower blocks, and then the combined model's, whose output layer averages the members'
    heads (half of a float16 value below its normal range, or a mean of two, need not be one)."""
    for member in members:
        round_to_half(member)
    model = combine(members, cut)
    round_to_half(model)
    return model


def member_entries(file: Path, meta: dict) -> list[dict]:
    """What the ensemble's JSON says of each network in a member file (an ensemble's own entries, as they are)."""
    if "members" in meta:
        return meta["members"]
    keep = ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")
    return [
        {
            "file": file.name,
            "version": meta["version"],
            "recipe": meta["recipe"],
            "kept_epoch": meta.get("kept_epoch"),
            "train_seconds": meta["train_seconds"],
            "backend": meta.get("backend"),  # the Keras backend it was trained on (jax: on a GPU machine)
            "history": meta["history"],
            "val": {k: meta["val"][k] for k in keep},
        }
    ]


def build(
    member_files: list[Path],
    data_dir: Path,
    out: Path,
    views=ORIGINAL_ONLY,
    half: bool = True,
    int8: bool | None = None,
) -> dict:
    """Combine the members, choose the operating point on val over the test-time ``views``, save as ``skinsite``.

    ``half``: the combined weights are rounded to float16 first, and stored so (ml/train/export.py).
    ``int8``: served from an int8 TFLite file (``ml.train.export.to_int8_tflite``), the operating point chosen on its
    val outputs; None: as the first member file is (so the shipped int8 model grows or is rebuilt as int8)."""
    loaded = [load_raw(f) for f in member_files]
    metas = [meta for _, meta in loaded]
    recipes = [meta["recipe"] for meta in metas]
    for key in ("cut", "input_size", "colour_constancy"):  # what the shared lower blocks compute
        if len({str(r.get(key)) for r in recipes}) > 1:
            raise ValueError(f"members differ in {key}: {[r.get(key) for r in recipes]}")
    if sum(len(networks(m)) for m, _ in loaded) < 2:
        raise ValueError("an ensemble needs at least two networks")
    # rounded before the operating point is chosen: it is chosen for the weights shipped
    model = (combine_rounded if half else combine)([m for m, _ in loaded], recipes[0]["cut"])
    entries = [entry for f, meta in zip(member_files, metas, strict=True) for entry in member_entries(f, meta)]
    result: dict = {
        "recipe": recipes[0] | {"name": "ensemble", "half_precision": half, "int8": bool(recipes[0].get("int8"))},
        "members": entries,
        "train_seconds": round(sum(entry["train_seconds"] for entry in entries), 1),
        "data_dir": str(data_dir),
        "images": metas[0]["images"],
    }
    if int8 is not None:
        result["recipe"]["int8"] = int8
    calibration = int8_calibration(result["recipe"], data_dir)
    result.update(choose_on_val(model, result["recipe"], data_dir, views, calibration))
    return save_served(model, out, "skinsite", result, data_dir, calibration)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.train.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("members", type=Path, nargs="+", help="the members' .keras files (JSON beside each)")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--out", type=Path, default=paths.MODELS_DIR)
    parser.add_argument(
        "--views", type=views_option, default=list(ORIGINAL_ONLY), help="test-time views, comma-separated"
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        help="serve an int8 TFLite file (convolutions in 8 bits), or not; default: as the first member file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        result = build(args.members, args.data_dir, args.out, args.views, int8=args.int8)
    except ValueError as error:
        parser.error(str(error))
    v = result["val"]
    print(
        f"{result['version']}: val accuracy {v['accuracy']:.4f}, balanced accuracy {v['balanced_accuracy']:.4f}, "
        f"macro AUC {v['macro_auc']:.4f}, melanoma recall {v['melanoma_recall']:.4f}"
    )


if __name__ == "__main__":
    main()
