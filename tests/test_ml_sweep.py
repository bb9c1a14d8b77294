"""ml.study.sweep: every variant is a valid ml.train command line, and runs are judged from their val logits."""

import json

import numpy as np
import pytest

from ml.serve.labels import CLASSES

pytest.importorskip("keras")


def test_every_variant_is_a_command_line_ml_train_accepts(tmp_path):
    from ml.study import sweep
    from ml.train.fit import argument_parser, recipe_cache_key, recipe_from

    recipes = {}
    for variant in sweep.VARIANTS:
        command = sweep.run_arguments(variant, 3, tmp_path / "out", tmp_path / "cache", tmp_path, tmp_path / "w.h5")
        assert command[1:3] == ["-m", "ml.train"]
        recipes[variant] = recipe_from(argument_parser().parse_args(command[3:]))
    base = recipes["base"]
    assert (base.seed, base.copies, base.epochs) == (3, 4, 12)
    assert recipes["deeper"].cut == "block_2_add" and recipes["deeper"].trainable_from == "block_3_expand"
    assert recipes["lr4e4"].learning_rate == 4e-4 and recipes["ls0"].label_smoothing == 0.0
    assert recipes["e20"].epochs == 20  # the later --epochs wins
    assert (recipes["wide"].units, recipes["wide"].dropout) == (512, 0.5)
    assert (recipes["mixup"].mixup, recipes["mixup"].cutmix) == (0.3, 0.0)
    assert (recipes["cutmix"].mixup, recipes["cutmix"].cutmix) == (0.0, 1.0)
    # Every variant but base changes the recipe, and only the ones with their own cache change what the cached
    # copies depend on (the cache's folder name, as ml.train.fit names it).
    assert all(recipes[v] != base for v in sweep.VARIANTS if v != "base")
    assert recipes["acquisition"].augmentation == "acquisition"
    assert recipes["constancy"].colour_constancy == 6.0 and base.colour_constancy is None
    assert recipes["large"].input_size == (288, 384) and base.input_size == (224, 288)
    cache = {v: recipe_cache_key(r) for v, r in recipes.items()}
    assert {v for v in sweep.VARIANTS if cache[v] != cache["base"]} == set(sweep.OWN_CACHE) - {"base"}


def test_each_cut_and_seed_has_one_cache_building_run_that_the_others_wait_for():
    from ml.study import sweep

    first, waits = sweep.launch_order(["ls0", "deeper", "base", "mixup"], [2, 3])
    assert first == [("deeper", 2), ("base", 2), ("deeper", 3), ("base", 3)]
    assert waits == {(v, s): ("base", s) for v in ("ls0", "mixup") for s in (2, 3)}
    # Without base, the first variant reading base's cache builds it.
    first, waits = sweep.launch_order(["mixup", "cutmix"], [4])
    assert first == [("mixup", 4)] and waits == {("cutmix", 4): ("mixup", 4)}


def test_runs_are_judged_on_val_and_variants_ranked_by_their_mean(tmp_path):
    from ml.study import sweep

    from .test_ml_pipeline import synthetic_ham

    data_dir = synthetic_ham(tmp_path / "ham")
    y = np.array([CLASSES.index(dx) for dx in val_labels(data_dir)])
    one_hot = np.eye(len(CLASSES))[y]
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for name, logits in {
        "base_s2": 5 * one_hot,  # every val image right, with margin
        "base_s3": rng.normal(size=one_hot.shape),  # chance
        "ls0_s2": 5 * one_hot + rng.normal(size=one_hot.shape),
    }.items():
        (runs / name).mkdir(parents=True)
        np.save(runs / name / "skinsite.val_logits.npy", logits.astype(np.float32))
        val = {"accuracy": 0.5, "balanced_accuracy": 0.4, "melanoma_recall": 0.7}
        meta = {"recipe": {"seed": int(name[-1])}, "val": val, "train_seconds": 1.0, "backend": "jax"}
        (runs / name / "skinsite.json").write_text(json.dumps(meta))

    # A whole-network run (``ml.train --recipe whole``) leaves whole.val_logits.npy and whole.json
    (runs / "whole_s0").mkdir()
    np.save(runs / "whole_s0" / "whole.val_logits.npy", (2 * one_hot).astype(np.float32))
    history = [{"phase": "head", "images_per_second": 60.0}, {"phase": "whole", "images_per_second": 20.0}]
    history.append({"phase": "whole", "images_per_second": 30.0})
    whole_meta = {
        "recipe": {"name": "whole", "cut": None, "epochs": 3, "seed": 0},
        "val": {"accuracy": 0.6, "balanced_accuracy": 0.5, "melanoma_recall": 0.8},
        "train_seconds": 9.0,
        "kept_epoch": 3,
        "images": {"train": 12},
        "extra_data": ["isic_archive"],
        "history": history,
        "machine": {"cpu": "test CPU"},
    }
    (runs / "whole_s0" / "whole.json").write_text(json.dumps(whole_meta))

    result = sweep.judge(runs, data_dir)
    by_run = {r["run"]: r for r in result["runs"]}
    assert by_run["base_s2"]["macro_auc"] == pytest.approx(1.0)
    assert by_run["base_s2"]["log_loss"] < 0.1 < by_run["base_s3"]["log_loss"]
    assert by_run["base_s3"]["variant"] == "base" and by_run["base_s3"]["seed"] == 3
    base = next(r for r in result["ranking"] if r["variant"] == "base")
    assert base["seeds"] == 2
    assert base["macro_auc"] == pytest.approx((1.0 + by_run["base_s3"]["macro_auc"]) / 2)
    whole = by_run["whole_s0"]
    assert whole["macro_auc"] == pytest.approx(1.0) and whole["whole_images_per_second"] == 25.0  # head epoch left out
    assert (whole["train_images"], whole["extra_data"], whole["kept_epoch"]) == (12, ["isic_archive"], 3)
    assert "whole_images_per_second" not in by_run["base_s2"]
    ranked = {r["variant"]: r for r in result["ranking"]}
    assert ranked["whole"]["arguments"] == "whole" and ranked["whole"]["seeds"] == 1
    result = {"runs": [r for r in result["runs"] if r["variant"] != "whole"]}
    result["ranking"] = sweep.rank(result["runs"])
    assert [r["variant"] for r in result["ranking"]] == ["ls0", "base"]  # ls0 separates every class
    assert base["at_operating_point"] == pytest.approx(
        {"accuracy": 0.5, "balanced_accuracy": 0.4, "melanoma_recall": 0.7}
    )

    # Merged into an earlier sweep: its other runs stay, a run of the same name is replaced, all ranked again.
    earlier = {
        "runs": [dict(by_run["base_s3"], run="mixup_s2", variant="mixup"), dict(by_run["base_s2"], macro_auc=0.1)]
    }
    both = sweep.merged(earlier, result)
    assert sorted(r["run"] for r in both["runs"]) == ["base_s2", "base_s3", "ls0_s2", "mixup_s2"]
    assert next(r for r in both["runs"] if r["run"] == "base_s2")["macro_auc"] == pytest.approx(1.0)
    assert [r["variant"] for r in both["ranking"]] == ["ls0", "base", "mixup"]


def val_labels(data_dir):
    from ml.train import data

    return data.part(data.load_dataset(data_dir), "val")["dx"].tolist()
