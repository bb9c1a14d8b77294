"""A training run's state after an epoch, so ``ml.train --resume RUN_DIR`` goes on exactly where it stopped.

It holds every variable of the model (the weights and the dropout layer's random generator state), the
optimizer's variables (its step count, which drives the learning-rate schedule, and Adam's moments), the epoch,
the history, which weights are kept so far (``ml.train.fit.Selection``, the running weight average among them) and
what the run was started with. The random draws of an epoch follow from (seed, epoch) (``ml.train.stream``), so the
epoch number is the rest of the random state. Written to a temporary file and moved into place, so a run killed
while writing keeps the previous epoch's checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import keras
import numpy as np

NAME = "checkpoint.pkl"


def variables(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.variables]


def optimizer_variables(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.optimizer.variables]


def restore(model: keras.Model, state: dict, with_optimizer: bool) -> None:
    """Put a checkpoint's variables back into ``model`` (built and compiled as it was)."""
    for variable, value in zip(model.variables, state["variables"], strict=True):
        variable.assign(value)
    if with_optimizer:
        model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, state["optimizer"], strict=True):
            variable.assign(value)


def write(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / NAME
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def read(run_dir: Path) -> dict:
    path = Path(run_dir) / NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {NAME}: nothing to resume")
    with open(path, "rb") as f:  # our own run's file, written by write() above
        return pickle.load(f)
