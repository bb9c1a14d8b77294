"""Train the classifier: ``python -m ml.train [--recipe improved|paper]``.

Both recipes fine-tune from cached activations of the frozen lower MobileNetV2 blocks (see ml/train/features.py):
- ``paper``: the seed paper's reference row. Frozen base, head only, Adam 1e-4, cross-entropy, batch 16,
  10 epochs, augmentation (drawn from the cached augmented copies), no class weights, no calibration.
- ``improved`` (default): blocks 6-16 fine-tuned with the head, batch norm frozen, class weights
  (inverse frequency ** 0.5), Adam with warm-up and cosine decay, a running mean of the weights over the
  later epochs kept where val loss is lowest, then on val: a logit adjustment for the operating point and
  temperature scaling, both folded into the last layer so the served file outputs the calibrated
  probabilities it decides on.

Networks trained with different seeds can be served together as one model: see ``ml.train.ensemble``.

Training runs on any Keras backend: the shipped networks were trained with TensorFlow on a CPU; on a GPU
machine without TensorFlow, ``KERAS_BACKEND=jax`` trains the same recipe (the Keras file is written, and the
TFLite export is left to ``ml.train.ensemble`` or ``ml.train.calibrate`` where TensorFlow is). ``--set FIELD=VALUE`` changes
any field of the recipe; ``ml.study.sweep`` compares such variants on val.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.inference import sha256  # noqa: E402
from ml.serve.labels import CLASSES  # noqa: E402
from ml.serve.preprocess import HAM_SCALE, INPUT_SIZE, preprocess  # noqa: E402
from ml.train import checkpoint, data, features, stream  # noqa: E402
from ml.train.checkpoint import restore  # noqa: E402
from ml.train.export import (  # noqa: E402
    NoActivationTensor,
    check_arrays,
    deflate,
    round_to_half,
    to_int8_tflite,
    to_tflite,
    write_explainer,
)
from ml.train.metrics import (  # noqa: E402
    choose_operating_point,
    class_prior,
    fit_temperature,
    operating_bias,
    softmax,
    summary,
)
from ml.train.model import build_classifier, fold_output_adjustment, set_trainable_from, split_model  # noqa: E402
from ml.train.timing import machine  # noqa: E402

log = logging.getLogger("ml.train.fit")


@dataclass(frozen=True)
class Recipe:
    name: str
    # Blocks 0-5 (38% of the network's multiply-adds, at 1/4 and 1/8 resolution) stay frozen and cached;
    # blocks 6-16 and the head train, at 1.3x the cost of training blocks 10-16 only.
    cut: str = "block_5_add"  # activations cached up to here
    trainable_from: str | None = "block_6_expand"  # None: head only
    epochs: int = 16
    batch_size: int = 64
    learning_rate: float = 2e-4
    warmup_epochs: int = 1
    class_weight_power: float = 0.5  # 0: plain cross-entropy, 1: fully balanced
    label_smoothing: float = 0.1
    copies: int = 8  # copy 0 plain, the rest augmented
    augmentation: str = "mild"  # of ml.train.augment.AUGMENTATIONS
    # The power of a colour-constancy layer before MobileNetV2 (ml.train.model.ShadesOfGray; 6 is the usual choice),
    # which undoes a light's or a camera's colour cast on every path into the model; None: none. Off by default:
    # three such networks (ml.study.sweep --variants constancy --seeds 2,0,1, 23-26 min each on an Intel Xeon CPU)
    # ranked val as the base recipe's do (mean macro AUC 0.948, melanoma AUC 0.909, log loss 0.610; base seeds 2-4:
    # 0.945, 0.909, 0.606), and served together they changed far fewer val answers under a colour cast (2.5-2.9%
    # against 6.7-8.3%, ml.study.robustness --part val) but did worse at their operating point on held-out halves of val
    # than the shipped three (accuracy + balanced accuracy 1.399 against 1.493; melanoma AUC 0.917 against 0.928).
    colour_constancy: float | None = None
    units: int = 256
    dropout: float = 0.4
    patience: int = 16
    # Mixing training pairs within a batch, on the cached activations (so after the frozen blocks: "manifold"
    # mixing), against the overfitting seen after about 9 epochs. mixup: Beta(a, a) weighted sums of two
    # examples' activations, targets and class weights; cutmix: a rectangle of one example's activation map
    # pasted into another's, the targets mixed by its area (a Beta(a, a) share). 0: off; both: half the batches each.
    # Off by default: on val (ml.study.sweep, seeds 2-4, recipe_sweep.json) mixup 0.3 over 20 epochs raised the mean
    # macro AUC from 0.945 to 0.951 but lowered melanoma AUC from 0.909 to 0.901, and three such networks served
    # together did worse at their operating point on held-out halves of val than the shipped three (1.458
    # against 1.493, val_comparison.json); cutmix 1.0 left both AUCs where they were and balanced accuracy lower.
    mixup: float = 0.0
    cutmix: float = 0.0
    select_on: str | None = "val_loss"  # a val metric (val_loss: lowest; any other: highest); None: the last epoch
    # From this epoch on, the candidate kept is the running mean of the weights after each epoch (stochastic
    # weight averaging): one model, served at the same cost, that sits in a flatter, steadier place than any
    # single epoch. None: single epochs. Batch norm is frozen, so the mean needs no statistics recomputed.
    average_from: int | None = 6
    final_learning_rate: float = 0.1  # the cosine decay's floor, as a fraction of the peak
    adjust_and_calibrate: bool = True
    min_val_melanoma_recall: float = 0.70
    seed: int = 0
    # The head's initial weights (and its dropout); None: ``seed``. The shipped ensemble's second member was
    # trained with seed 1 and head seed 0, to try averaging two members' weights (one network, no extra cost):
    # on val that fell apart (log loss 1.04 against 0.61 for either member), so members are combined by their
    # logits instead (ml.train.ensemble). Kept so that member can be trained again exactly.
    head_seed: int | None = None
    input_size: tuple[int, int] = INPUT_SIZE
    alpha: float = 1.0  # MobileNetV2 width; the ImageNet weights are for 1.0
    freeze_batch_norm: bool = True  # always with ImageNet weights (see the weights' README)
    # Weights rounded to float16 before the operating point is chosen, and stored so (ml/train/export.py): half the
    # file size; the model computes in float32 as before.
    half_precision: bool = True
    # Whole-network training from the pixels (``cut`` None: nothing cached, see ``train_whole``): the first
    # ``head_only_epochs`` train the head alone at ``head_learning_rate`` with the base frozen, so that a random
    # head's gradients do not wreck the ImageNet filters; then every block trains at ``learning_rate``.
    head_only_epochs: int = 0
    head_learning_rate: float = 1e-3
    # Images drawn per epoch (None: as many as the train part has), with replacement, each image with
    # probability proportional to n_class ** -sample_power: 0 draws as the data is, 1 every class alike,
    # 0.5 a class in proportion to the square root of its size. The balance is taken over the whole train part,
    # extra folders included (``--extra-data``), so extra melanomas do not tilt it further.
    epoch_images: int | None = None
    sample_power: float = 0.0


def recipe_cache_key(recipe: Recipe) -> str:
    """The folder of ``recipe``'s cached lower-block activations: named by every field they depend on."""
    return features.cache_key(recipe.cut, recipe.input_size, recipe.seed, recipe.augmentation, recipe.colour_constancy)


RECIPES = {
    "improved": Recipe("improved"),
    "whole": Recipe(
        "whole",
        cut=None,
        trainable_from="Conv1",
        epochs=12,
        batch_size=32,
        learning_rate=1e-4,
        warmup_epochs=0,
        head_only_epochs=1,
        head_learning_rate=1e-3,
        class_weight_power=0.0,  # balanced by sampling instead
        epoch_images=6000,
        sample_power=0.5,
        augmentation="frame",
        copies=0,
        average_from=7,
        patience=12,
    ),
    "paper": Recipe(
        "paper",
        cut="block_9_add",
        trainable_from=None,
        copies=6,
        dropout=0.3,
        label_smoothing=0.0,
        epochs=10,
        input_size=HAM_SCALE,  # a fixed reference row, whatever input size the served model uses
        average_from=None,
        batch_size=16,
        learning_rate=1e-4,
        warmup_epochs=0,
        class_weight_power=0.0,
        select_on=None,
        adjust_and_calibrate=False,
        patience=0,
    ),
}


def class_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-sample weights (n_total / n_class) ** power, scaled to mean 1 so the loss keeps its size."""
    counts = np.maximum(np.bincount(labels, minlength=len(CLASSES)), 1).astype(float)
    weights = (counts.sum() / counts) ** power
    return weights[labels] / weights[labels].mean()


def mixed_batch(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray, rng: np.random.Generator, mixup: float, cutmix: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch whose examples are mixed with a shuffled copy of the batch (see ``Recipe.mixup``/``cutmix``).
    ``x`` is (n, ...) activations, ``target`` (n, classes), ``weight`` (n,); the inputs are not changed.
    Pooled inputs (no map to cut a rectangle from: the frozen-base recipe) are mixed as by mixup."""
    kinds = [k for k, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not kinds or len(x) < 2:
        return x, target, weight
    kind = kinds[rng.integers(len(kinds))]
    alpha = mixup if kind == "mixup" else cutmix
    n = len(x)
    pair = rng.permutation(n)
    share = rng.beta(alpha, alpha, n).astype(np.float32)  # of each example's own part
    if kind == "mixup" or x.ndim != 4:
        shape = (n,) + (1,) * (x.ndim - 1)
        mixed = share.reshape(shape) * x + (1 - share.reshape(shape)) * x[pair]
    else:
        mixed = x.copy()
        height, width = x.shape[1:3]
        for i in range(n):
            h = int(round(height * np.sqrt(1 - share[i])))
            w = int(round(width * np.sqrt(1 - share[i])))
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            mixed[i, top : top + h, left : left + w] = x[pair[i], top : top + h, left : left + w]
            share[i] = 1 - h * w / (height * width)  # the area actually kept
    s = share[:, None]
    return mixed, s * target + (1 - s) * target[pair], share * weight + (1 - share) * weight[pair]


def running_mean(average: list | None, weights: list, count: int) -> list:
    """The mean of ``count`` weight lists, given the mean of the first ``count - 1`` and the last one."""
    if average is None:
        return [np.copy(w) for w in weights]
    return [a + (w - a) / count for a, w in zip(average, weights, strict=True)]


@dataclass
class Selection:
    """Which weights a run keeps, decided after every epoch on val (``Recipe.select_on``, ``average_from``,
    ``patience``). Plain data, so a checkpoint can hold it."""

    best: float = -np.inf
    best_weights: list | None = None
    kept: int | None = None
    stale: int = 0
    average: list | None = None
    stopped: bool = False

    def judge(self, model, recipe: Recipe, epoch: int, predict_val, y_val: np.ndarray) -> dict:
        """The epoch's val row. From ``average_from`` on, the candidate judged is the running mean of the
        weights (``model`` is left holding the epoch's own weights, which training goes on from)."""
        weights = candidate = model.get_weights()
        if recipe.average_from and epoch >= recipe.average_from:
            if self.average is None:  # from here on the candidates are averages: a single early epoch is not kept
                self.best, self.best_weights, self.stale = -np.inf, None, 0
            candidate = self.average = running_mean(self.average, weights, epoch - recipe.average_from + 1)
            model.set_weights(self.average)  # judged on val as the average
        val_probs = predict_val()
        if candidate is not weights:
            model.set_weights(weights)
        m = summary(y_val, val_probs)
        row = {
            "epoch": epoch,
            "val_loss": float(-np.log(np.clip(val_probs[np.arange(len(y_val)), y_val], 1e-12, None)).mean()),
            **{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")},
        }
        if recipe.select_on:
            score = -row["val_loss"] if recipe.select_on == "val_loss" else row[recipe.select_on]
            if score > self.best:
                self.best, self.best_weights, self.kept, self.stale = score, candidate, epoch, 0
            else:
                self.stale += 1
                if self.stale >= recipe.patience:
                    log.info("early stop: no better val %s for %d epochs", recipe.select_on, self.stale)
                    self.stopped = True
        return row

    def keep_best(self, model, history: list, recipe: Recipe) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)
            log.info(
                "kept epoch %d: val %s %.4f", self.kept, recipe.select_on, history[self.kept - 1][recipe.select_on]
            )


def compiled(model: keras.Model):
    """``model`` in inference mode as one compiled function of a batch (a ``tf.function`` on TensorFlow, where
    the shipped networks were trained; Keras's own compiled predict step on the other backends)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x, training=False: model(x, training=False))
    return lambda x, training=False: model.predict_on_batch(np.asarray(x))


def train(
    recipe: Recipe, data_dir: Path, weights: Path | None, out: Path, cache_dir: Path, limit: int | None = None
) -> dict:
    started = time.time()
    keras.utils.set_random_seed(recipe.seed)
    frame = data.load_dataset(data_dir)
    if limit:  # a quick smoke run on a few images per part
        frame = frame.groupby("split", group_keys=False).head(limit)
    y_train = data.part(frame, "train")["label"].to_numpy()
    y_val = data.part(frame, "val")["label"].to_numpy()

    model = build_classifier(
        weights,
        recipe.input_size,
        recipe.units,
        recipe.dropout,
        recipe.alpha,
        recipe.seed if recipe.head_seed is None else recipe.head_seed,
        recipe.freeze_batch_norm,
        recipe.colour_constancy,
    )
    set_trainable_from(model, recipe.trainable_from, recipe.freeze_batch_norm)
    lower, upper = split_model(model, recipe.cut)
    lower_fn = compiled(lower)
    key = recipe_cache_key(recipe) + (f"_limit{limit}" if limit else "")
    cache = cache_dir / key

    def acts(part: str, copy: int = 0) -> np.ndarray:
        return features.cached(lower_fn, frame, part, copy, recipe.seed, recipe.input_size, cache, recipe.augmentation)

    train_acts = np.stack([acts("train", k) for k in range(recipe.copies)])
    val_acts = np.asarray(acts("val"))
    log.info("cache ready after %.0f s: train %s, val %s", time.time() - started, train_acts.shape, val_acts.shape)

    if recipe.trainable_from is None:
        # Frozen base: run it once per cached copy, then only the head trains (same maths, far cheaper).
        to_pool = split_model(model, recipe.cut, until="pool")[1]
        trained = split_model(model, "pool")[1]
        pool_fn = compiled(to_pool)

        def pooled(a: np.ndarray) -> np.ndarray:
            return np.concatenate([keras.ops.convert_to_numpy(pool_fn(a[i : i + 256])) for i in range(0, len(a), 256)])

        train_inputs = np.stack([pooled(a) for a in tqdm(train_acts, desc="pooling copies")])
        val_inputs = pooled(val_acts)
    else:
        trained, train_inputs, val_inputs = upper, train_acts, val_acts

    steps = int(np.ceil(len(y_train) / recipe.batch_size))
    warmup = steps * recipe.warmup_epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 20 if warmup else recipe.learning_rate,
        decay_steps=max(steps * recipe.epochs - warmup, 1),
        warmup_target=recipe.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=recipe.final_learning_rate if recipe.select_on else 1.0,
    )
    if not recipe.select_on:  # the paper: constant learning rate
        schedule = recipe.learning_rate
    trained.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
    )
    one_hot = np.eye(len(CLASSES), dtype=np.float32)
    sample_weight = class_weights(y_train, recipe.class_weight_power)

    rng = np.random.default_rng(recipe.seed)
    val_x = np.asarray(val_inputs, np.float32)
    history, selection = [], Selection()
    for epoch in range(1, recipe.epochs + 1):
        t0 = time.time()
        order = rng.permutation(len(y_train))
        copy = rng.integers(0, recipe.copies, len(y_train))
        losses = []
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{recipe.epochs}", unit="step", mininterval=10)
        for s in bar:
            idx = order[s * recipe.batch_size : (s + 1) * recipe.batch_size]
            x, target, weight = mixed_batch(
                train_inputs[copy[idx], idx].astype(np.float32),
                one_hot[y_train[idx]],
                sample_weight[idx],
                rng,
                recipe.mixup,
                recipe.cutmix,
            )
            losses.append(float(trained.train_on_batch(x, target, sample_weight=weight)))
            if s % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        row = selection.judge(model, recipe, epoch, lambda: trained.predict(val_x, batch_size=256, verbose=0), y_val)
        row.update(train_loss=float(np.mean(losses)), seconds=round(time.time() - t0, 1))
        history.append(row)
        log.info("epoch %s", json.dumps(row))
        if selection.stopped:
            break
    selection.keep_best(model, history, recipe)
    return finish(
        model,
        recipe,
        history,
        selection.kept,
        lambda: trained.predict(val_x, batch_size=256, verbose=0),
        y_train,
        y_val,
        out,
        frame,
        data_dir,
        started,
    )


def finish(
    model,
    recipe: Recipe,
    history: list,
    kept,
    predict_val,
    y_train,
    y_val,
    out: Path,
    frame,
    data_dir,
    started: float,
    **extra,
) -> dict:
    """After the last epoch (the kept weights in ``model``): round to float16, store the raw val logits, choose
    the operating point and temperature on val, and save the files (``save``). ``predict_val()`` gives the
    model's val probabilities; ``extra`` goes into the JSON."""
    if recipe.half_precision:
        round_to_half(model)  # the operating point is chosen on the weights that are shipped

    result: dict = {"recipe": asdict(recipe), "history": history, "kept_epoch": kept, **extra}
    val_probs = predict_val()
    val_logits = np.log(np.clip(val_probs, 1e-12, None))
    # The raw val logits, for comparing runs and their combinations without loading each model again.
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{out_name(recipe)}.val_logits.npy", val_logits.astype(np.float32))
    if recipe.adjust_and_calibrate:
        result.update(set_operating_point(model, y_val, val_logits, class_prior(y_train), recipe))
    else:
        result.update(temperature=1.0, val=summary(y_val, val_probs))
    result.update(
        train_seconds=round(time.time() - started, 1),
        data_dir=str(data_dir),
        images={p: int((frame["split"] == p).sum()) for p in ("train", "val", "test")},
    )
    explain_on = check_arrays(tuple(recipe.input_size), data_dir, count=16)
    return save(model, out, out_name(recipe), result, recipe.half_precision, explain_on=explain_on)


def train_whole(
    recipe: Recipe,
    data_dir: Path,
    weights: Path | None,
    out: Path,
    extra_data: list[Path] = (),
    limit: int | None = None,
    stop_after: int | None = None,
    resume: dict | None = None,
) -> dict | None:
    """Train every block of the network from the pixels (a recipe with ``cut`` None), the train images
    augmented anew every epoch (``ml.train.stream``), ``extra_data`` folders added to the train part only.

    A checkpoint is written to ``out`` after every epoch (``ml.train.checkpoint``); ``resume`` (a checkpoint read back)
    goes on after its epoch, and ends with the weights an uninterrupted run has. ``stop_after``: stop after that
    epoch, leaving the checkpoint (returns None), as a run killed then would."""
    started = time.time() - (resume["elapsed"] if resume else 0.0)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(recipe.seed)  # the head's initial weights (a resumed run overwrites them)
    frame = data.with_extra(data.load_dataset(data_dir), extra_data)
    if limit:  # a quick smoke run on a few images per part and source
        frame = frame.groupby(["split", "source"], group_keys=False).head(limit)
    train_part, val_part = data.part(frame, "train"), data.part(frame, "val")
    y_train, y_val = train_part["label"].to_numpy(), val_part["label"].to_numpy()
    size = recipe.input_size
    images = stream.decode(train_part["path"])
    val_x = np.stack([preprocess(p, size) for p in val_part["path"]])
    shares = stream.class_shares(y_train, recipe.sample_power)
    log.info(
        "train %d images (%s), val %d; classes drawn as %s",
        len(y_train),
        ", ".join(f"{k} {v}" for k, v in train_part["source"].value_counts().items()),
        len(y_val),
        ", ".join(f"{c} {p:.1%}" for c, p in zip(CLASSES, shares, strict=True)),
    )

    model = build_classifier(
        weights,
        size,
        recipe.units,
        recipe.dropout,
        recipe.alpha,
        recipe.seed if recipe.head_seed is None else recipe.head_seed,
        recipe.freeze_batch_norm,
        recipe.colour_constancy,
    )
    per_epoch = recipe.epoch_images or len(y_train)
    steps = int(np.ceil(per_epoch / recipe.batch_size))
    full_epochs = recipe.epochs - recipe.head_only_epochs
    one_hot = np.eye(len(CLASSES), dtype=np.float32)
    sample_weight = class_weights(y_train, recipe.class_weight_power)

    def phase(epoch: int) -> str:
        return "head" if epoch <= recipe.head_only_epochs else "whole"

    def compile_for(name: str) -> None:
        set_trainable_from(model, None if name == "head" else recipe.trainable_from, recipe.freeze_batch_norm)
        if name == "head":
            rate = recipe.head_learning_rate
        else:
            warmup = steps * recipe.warmup_epochs
            rate = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=recipe.learning_rate / 20 if warmup else recipe.learning_rate,
                decay_steps=max(steps * full_epochs - warmup, 1),
                warmup_target=recipe.learning_rate if warmup else None,
                warmup_steps=warmup,
                alpha=recipe.final_learning_rate,
            )
        model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        )

    history, selection, first = [], Selection(), 1
    if resume:
        history, selection, first = resume["history"], resume["selection"], resume["epoch"] + 1
    compile_for(phase(first))
    if resume:
        # The optimizer's state goes on within a phase; a new phase starts a new optimizer, as it does unbroken.
        restore(model, resume, with_optimizer=phase(first) == resume["phase"])
        log.info("resumed after epoch %d of %d", resume["epoch"], recipe.epochs)
    predict_val = compiled(model)

    def val_probs() -> np.ndarray:
        return np.concatenate(
            [keras.ops.convert_to_numpy(predict_val(val_x[i : i + 64])) for i in range(0, len(val_x), 64)]
        )

    rates = [row["images_per_second"] for row in history if "images_per_second" in row]
    for epoch in range(first, recipe.epochs + 1):
        if epoch > first and phase(epoch) != phase(epoch - 1):
            compile_for(phase(epoch))
        t0 = time.time()
        order = stream.epoch_draw(y_train, recipe.epoch_images, recipe.sample_power, recipe.seed, epoch)
        losses = []
        bar = tqdm(total=len(order), desc=f"epoch {epoch}/{recipe.epochs} ({phase(epoch)})", unit="img", mininterval=10)
        for x, idx in stream.batches(images, order, recipe.batch_size, size, recipe.augmentation, recipe.seed, epoch):
            losses.append(float(model.train_on_batch(x, one_hot[y_train[idx]], sample_weight=sample_weight[idx])))
            bar.update(len(idx))
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        train_time = time.time() - t0
        row = selection.judge(model, recipe, epoch, val_probs, y_val)
        seconds = time.time() - t0
        rates.append(len(order) / train_time)
        # What is left at the rate of the epochs so far that trained the whole network (the head alone is faster).
        rate = np.mean(
            [r for r, row_ in zip(rates, [*history, row], strict=True) if phase(row_["epoch"]) == "whole"] or rates
        )
        left = (recipe.epochs - epoch) * (per_epoch / rate + seconds - train_time)
        row.update(
            phase=phase(epoch),
            train_loss=float(np.mean(losses)),
            images_per_second=round(len(order) / train_time, 1),
            seconds=round(seconds, 1),
            seconds_left=round(left),
        )
        history.append(row)
        log.info("epoch %s", json.dumps(row))
        checkpoint.write(
            out,
            {
                "epoch": epoch,
                "phase": phase(epoch),
                "variables": checkpoint.variables(model),
                "optimizer": checkpoint.optimizer_variables(model),
                "history": history,
                "selection": selection,
                "elapsed": time.time() - started,
                "recipe": asdict(recipe),
                "args": {
                    "data_dir": str(data_dir),
                    "weights": str(weights) if weights else None,
                    "extra_data": [str(d) for d in extra_data],
                    "limit": limit,
                },
            },
        )
        if selection.stopped:
            break
        if stop_after is not None and epoch >= stop_after and epoch < recipe.epochs:
            log.info("stopped after epoch %d: resume with --resume %s", epoch, out)
            return None
    selection.keep_best(model, history, recipe)
    # The operating point's prior is the dataset's own train part, as ml.train.calibrate and ml.train.ensemble take it.
    y_dataset = train_part.loc[train_part["source"] == "ham10000", "label"].to_numpy()
    return finish(
        model,
        recipe,
        history,
        selection.kept,
        val_probs,
        y_dataset,
        y_val,
        out,
        frame,
        data_dir,
        started,
        extra_data=[
            {"folder": str(d), "images": int((train_part["source"] == Path(d).name).sum())} for d in extra_data
        ],
        machine=machine(),
    )


def set_operating_point(model, y_val: np.ndarray, logits: np.ndarray, prior: np.ndarray, recipe: Recipe) -> dict:
    """Choose the operating point and the temperature on val, fold both into the model's last layer (in place).

    ``logits`` are the model's raw val logits (nothing folded in yet)."""
    tau, melanoma_bias, sweep = choose_operating_point(y_val, logits, prior, recipe.min_val_melanoma_recall)
    bias = operating_bias(prior, tau, melanoma_bias)
    temperature = fit_temperature(y_val, logits + bias)
    fold_output_adjustment(model, bias, temperature)
    log.info("operating point tau=%.2f, melanoma bias=%.2f, temperature=%.3f", tau, melanoma_bias, temperature)
    return {
        "logit_adjustment": {"tau": tau, "melanoma_bias": melanoma_bias, "bias": bias.tolist(), "sweep": sweep},
        "temperature": temperature,
        "val_before_calibration": summary(y_val, softmax(logits + bias)),
        "val": summary(y_val, softmax((logits + bias) / temperature)),
    }


def save(
    model, out: Path, name: str, result: dict, half: bool = True, int8_calibration=None, measure=None, explain_on=None
) -> dict:
    """Write the Keras file, its TFLite export and the JSON beside them; the version names the TFLite hash.

    ``half``: weights rounded to float16 (in place) and stored so in the Keras file, and in the TFLite file
    where that is float (see ml/train/export.py).
    ``int8_calibration``: preprocessed train arrays; where given, the TFLite file computes the convolutions in
    8-bit integers, their ranges measured on those arrays (``ml.train.export.to_int8_tflite``).
    ``measure``: called with the new TFLite file's path before anything is in place; the dict it returns goes
    into the JSON (``ml.train.calibrate.save_served`` measures val on the file itself).
    ``explain_on``: preprocessed arrays; where given, the worker's companion of the TFLite file is written too
    (``ml.train.export.write_explainer``, checked on those arrays) and named in the JSON.
    The files are written to a folder beside ``out`` and moved in only when all of them are there, so a failed
    export or measurement leaves the model that was there as it was."""
    out.mkdir(parents=True, exist_ok=True)
    if half:
        round_to_half(model)  # a no-op where they already are; the last layer may have had an adjustment folded in
    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-") as tmp:
        keras_file, tflite_file, json_file = (
            Path(tmp) / f"{name}{suffix}" for suffix in (".keras", ".tflite", ".json")
        )
        stored = model
        if getattr(model, "optimizer", None) is not None:
            # A .keras file keeps a compiled model's optimizer state (Keras 3 ignores include_optimizer for it):
            # whole-network training compiles the whole model, whose Adam moments would triple the file.
            stored = keras.Model.from_config(model.get_config())  # clone_model would compile the copy too
            stored.set_weights(model.get_weights())
        stored.save(keras_file)
        if half:
            deflate(keras_file)
        files = [keras_file]
        if (
            backend == "tensorflow"
        ):  # the TFLite export needs TensorFlow: elsewhere ml.train.ensemble or ml.train.calibrate does
            if int8_calibration is None:
                files.append(to_tflite(model, tflite_file, half))
            else:
                files.append(to_int8_tflite(model, tflite_file, int8_calibration))
        hashes = {file.name: sha256(file) for file in files}
        digest = hashes[files[-1].name]
        result.pop("explainer", None)  # a recalibrated model's JSON names the old file's companion
        if explain_on is not None and tflite_file in files:
            try:
                result["explainer"] = write_explainer(model, tflite_file, explain_on, Path(tmp))
            except NoActivationTensor as error:
                # The model is saved without it; a worker refuses it with "run python -m ml.train.export".
                log.warning("no companion file for the workers: %s", error)
            else:
                companions = [Path(tmp) / result["explainer"][key] for key in ("file", "head")]
                hashes |= {file.name: sha256(file) for file in companions}
                files += companions
        stamp = datetime.now(UTC)
        result.update(
            name="MobileNetV2 (ImageNet) fine-tuned on HAM10000",
            version=f"mnv2-ham10000-{result['recipe']['name']}-{stamp:%Y%m%d}-{digest[:8]}",
            created_at=stamp.isoformat(timespec="seconds"),
            classes=list(CLASSES),
            input_size=list(result["recipe"]["input_size"]),
            files=hashes,
            python=sys.version.split()[0],
            keras=keras.__version__,
            backend=backend,
            weights="float16" if half else "float32",
        )
        for key in ("served_precision", "int8_calibration_images"):  # a recalibrated model's JSON may hold them
            result.pop(key, None)
        if int8_calibration is not None:
            # The TFLite file's convolutions; the Keras file keeps ``weights``.
            result.update(served_precision="int8", int8_calibration_images=len(int8_calibration))
        if backend == "tensorflow":
            import tensorflow as tf

            result["tensorflow"] = tf.__version__
        if measure is not None and tflite_file in files:
            result.update(measure(tflite_file))
        json_file.write_text(json.dumps(result, indent=2))
        for file in [*files, json_file]:
            os.replace(file, out / file.name)
    log.info("saved %s (%s)", out / f"{name}.keras", result["version"])
    return result


def recipe_setting(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` for one field of :class:`Recipe`, VALUE as a Python literal (a bare word is a string)."""
    field, sep, value = text.partition("=")
    if not sep or field not in Recipe.__dataclass_fields__ or field == "name":
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD a recipe field, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return field, tuple(parsed) if isinstance(parsed, list) else parsed


def out_name(recipe: Recipe) -> str:
    return "skinsite" if recipe.name == "improved" else recipe.name


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="improved")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--weights", type=Path, default=paths.IMAGENET_WEIGHTS, help="MobileNetV2 no-top .h5")
    parser.add_argument("--out", type=Path, help="default: ml/models (improved) or ml/runs/<recipe>")
    parser.add_argument("--cache-dir", type=Path, default=paths.CACHE_DIR)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--head-seed", type=int, help="the head's initial weights (default: --seed)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--copies", type=int)
    parser.add_argument("--limit", type=int, help="only N images per split part (smoke test)")
    parser.add_argument(
        "--extra-data",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder in the isic_archive layout (metadata.csv, images/) added to the train part only; "
        "repeatable; whole-network recipes only",
    )
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="go on with the run whose checkpoint is in RUN_DIR (its --out)"
    )
    parser.add_argument("--stop-after", type=int, metavar="EPOCH", help="stop after this epoch, to --resume later")
    parser.add_argument(
        "--set",
        type=recipe_setting,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any other field of the recipe, e.g. --set learning_rate=3e-4 (repeatable)",
    )
    return parser


def recipe_from(args: argparse.Namespace) -> Recipe:
    overrides = {k: v for k in ("seed", "head_seed", "epochs", "copies") if (v := getattr(args, k)) is not None}
    return replace(RECIPES[args.recipe], **{**dict(args.set), **overrides})


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    args = parser.parse_args(argv)
    state = None
    if args.resume:
        try:
            state = checkpoint.read(args.resume)
        except FileNotFoundError as error:
            parser.error(str(error))
        recipe = Recipe(**{**state["recipe"], "input_size": tuple(state["recipe"]["input_size"])})
        out = args.resume
        started = state["args"]
        args.data_dir, args.limit = Path(started["data_dir"]), started["limit"]
        args.weights = Path(started["weights"]) if started["weights"] else None
        args.extra_data = [Path(d) for d in started["extra_data"]]
    else:
        recipe = recipe_from(args)
        out = args.out or (paths.MODELS_DIR if recipe.name == "improved" else paths.RUNS_DIR / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[
            logging.StreamHandler(),
            logging.FileHandler(out / f"{out_name(recipe)}.train.log", mode="a" if state else "w"),
        ],
    )
    for required in (args.data_dir, args.weights, *args.extra_data):
        if not required.exists():
            parser.error(f"{required} does not exist")
    for extra in args.extra_data:
        if not (extra / "metadata.csv").is_file():
            parser.error(f"{extra} has no metadata.csv: an extra training folder needs metadata.csv and images/")
    if recipe.cut is None:
        log.info("%s", machine())
        train_whole(recipe, args.data_dir, args.weights, out, args.extra_data, args.limit, args.stop_after, state)
    elif args.extra_data or args.resume or args.stop_after:
        parser.error("--extra-data, --resume and --stop-after are for whole-network recipes (--recipe whole)")
    else:
        train(recipe, args.data_dir, args.weights, out, args.cache_dir, args.limit)


if __name__ == "__main__":
    main()
