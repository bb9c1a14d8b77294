"""ml/ on generated images and a tiny untrained-from-scratch MobileNetV2: runs in seconds, no dataset needed."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.serve.labels import CLASSES

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.training

# Largest probability difference allowed between a half-precision TFLite file and its Keras model. Measured for
# the three-network ensemble when it was served in float16: at most 4.5e-4 over 128 val images; this tiny
# network's own figure is not recorded, and the bound leaves it room.
HALF_PRECISION_TOLERANCE = 2e-3

# Each class gets its own colour and blob position, so a small network can learn them in a few steps.
COLOURS = [
    (200, 60, 60),
    (60, 200, 60),
    (60, 60, 200),
    (200, 200, 60),
    (200, 60, 200),
    (60, 200, 200),
    (120, 120, 120),
]


def synthetic_ham(root: Path, per_part=(8, 3, 3)) -> Path:
    """A HAM10000-shaped folder: images/, HAM10000_metadata.csv and split.csv."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, n = [], 0
    for label, dx in enumerate(CLASSES):
        for part, count in zip(("train", "val", "test"), per_part):
            for _ in range(count):
                pixels = rng.integers(150, 200, (150, 200, 3)).astype(np.uint8)
                cy, cx = 40 + 10 * (label % 3), 50 + 15 * label
                pixels[cy - 25 : cy + 25, cx - 25 : cx + 25] = COLOURS[label]
                image_id = f"ISIC_{n:07d}"
                Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=95)
                rows.append((image_id, f"HAM_{n:07d}", dx, part))
                n += 1
    with open(root / "split.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image_id", "lesion_id", "dx", "split"), *rows])
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"))
        w.writerows((lesion, image, dx, "histo", 50, "male", "back") for image, lesion, dx, _ in rows)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Train the improved recipe end to end on the synthetic folder with a tiny network, once per module."""
    from ml.train.fit import RECIPES, train

    root = tmp_path_factory.mktemp("ml")
    data_dir = synthetic_ham(root / "ham")
    recipe = replace(
        RECIPES["improved"],
        input_size=(64, 64),
        alpha=0.35,
        units=16,
        epochs=10,  # six were too few on some CPUs: the loss had barely left log(7)
        batch_size=8,
        copies=2,
        learning_rate=3e-3,
        label_smoothing=0.0,
        dropout=0.3,
        patience=10,
        average_from=6,
        freeze_batch_norm=False,  # from random init the batch statistics are all the scale there is
        cut="block_2_add",  # a random lower part shrinks activations: cut early, train the rest
        trainable_from="block_3_expand",
    )
    result = train(recipe, data_dir, None, root / "model", root / "cache")
    return {"result": result, "data_dir": data_dir, "model_dir": root / "model"}


def test_training_loop_runs_and_loss_falls(tiny_run):
    history = tiny_run["result"]["history"]
    assert len(history) >= 3
    # The best later epoch, not the last: with a tiny batch and a cosine schedule the last epoch can bounce.
    assert min(epoch["train_loss"] for epoch in history[1:]) < history[0]["train_loss"] * 0.8


def test_weight_averaging_keeps_the_best_average_never_an_earlier_single_epoch(tiny_run):
    result = tiny_run["result"]
    averaged = [row for row in result["history"] if row["epoch"] >= result["recipe"]["average_from"]]
    assert len(averaged) >= 2
    assert result["kept_epoch"] == min(averaged, key=lambda row: row["val_loss"])["epoch"]


def test_running_mean_of_weights_is_the_mean_of_every_epoch():
    from ml.train.fit import running_mean

    epochs = [[np.full((2, 3), float(k)), np.arange(4.0) * k] for k in (1, 2, 6)]
    average = None
    for count, weights in enumerate(epochs, start=1):
        average = running_mean(average, weights, count)
    np.testing.assert_allclose(average[0], np.full((2, 3), 3.0))
    np.testing.assert_allclose(average[1], np.arange(4.0) * 3)
    assert average[0] is not epochs[0][0]  # the first epoch's arrays are copied, not aliased


def test_training_writes_model_files_and_metadata(tiny_run):
    model_dir = tiny_run["model_dir"]
    meta = json.loads((model_dir / "skinsite.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["input_size"] == [64, 64]
    assert meta["version"].startswith("mnv2-ham10000-improved-")
    assert meta["temperature"] > 0
    # with the worker's companion file and the head's weights (ml.train.export.write_explainer)
    assert set(meta["files"]) == {"skinsite.keras", "skinsite.tflite", "skinsite.explain.tflite", "skinsite.head.npz"}
    assert meta["explainer"]["file"] == "skinsite.explain.tflite"


def test_tflite_export_gives_the_same_probabilities_as_keras(tiny_run, tmp_path):
    import keras

    from ml.serve.inference import Classifier
    from ml.serve.preprocess import preprocess
    from ml.train.export import to_tflite

    model_dir = tiny_run["model_dir"]
    net = keras.models.load_model(model_dir / "skinsite.keras")
    images = sorted((tiny_run["data_dir"] / "images").glob("*.jpg"))[:5]
    batch = np.stack([preprocess(p, (64, 64)) for p in images])
    expected = net.predict(batch, verbose=0)
    # A float32 export computes what Keras computes.
    (tmp_path / "float32.json").write_text((model_dir / "skinsite.json").read_text())
    exact = Classifier(to_tflite(net, tmp_path / "float32.tflite"))
    np.testing.assert_allclose(exact.predict_arrays(batch), expected, atol=1e-4)
    # The saved file stores float16 weights, rounded after the converter folds batch norm into the
    # convolutions: a little further off, and half the size.
    saved = Classifier(model_dir / "skinsite.tflite")
    np.testing.assert_allclose(saved.predict_arrays(batch), expected, atol=HALF_PRECISION_TOLERANCE)
    assert (model_dir / "skinsite.tflite").stat().st_size < 0.6 * (tmp_path / "float32.tflite").stat().st_size


def test_saved_weights_are_float16_values_in_a_compressed_keras_file(tiny_run):
    import zipfile

    import keras

    keras_file = tiny_run["model_dir"] / "skinsite.keras"
    assert json.loads(keras_file.with_suffix(".json").read_text())["weights"] == "float16"
    weights = keras.models.load_model(keras_file).get_weights()
    assert weights and all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in weights)
    with zipfile.ZipFile(keras_file) as zf:
        stored = {info.filename: info for info in zf.infolist()}
    assert stored["model.weights.h5"].compress_type == zipfile.ZIP_DEFLATED
    assert stored["model.weights.h5"].compress_size < 0.8 * stored["model.weights.h5"].file_size


def test_an_int8_copy_is_measured_against_the_served_file_on_val(tiny_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from ml.train.quantize import compare

    result = compare(tiny_run["model_dir"] / "skinsite.keras", tiny_run["data_dir"], tmp_path, 8, repeats=3)
    int8_file = tmp_path / "skinsite.tflite"
    interpreter = Interpreter(model_path=str(int8_file))
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes  # convolutions in 8 bits
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    assert result["int8_model"].endswith(
        "-int8-" + json.loads((tmp_path / "skinsite.json").read_text())["files"]["skinsite.tflite"][:8]
    )
    assert result["val_images"] == 3 * len(CLASSES)
    assert result["calibration_images"] == 8
    for name in ("served", "int8"):
        assert result[name]["batch1_p50_ms"] > 0
        figures = result[name]["val"]
        assert 0 <= figures["served_point"]["accuracy"] <= 1
        assert 0 <= figures["own_point"]["balanced_accuracy"] <= 1
        assert 0 <= figures["raw_melanoma_auc"] <= 1
    # The softmax stays float: probabilities are not steps of 1/256, and they still sum to 1.
    from ml.serve.inference import Classifier
    from ml.serve.preprocess import preprocess

    images = sorted((tiny_run["data_dir"] / "images").glob("*.jpg"))[:6]
    probs = Classifier(int8_file).predict_arrays(np.stack([preprocess(p, (64, 64)) for p in images]))
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(probs * 256, np.round(probs * 256), atol=1e-3)
    assert result["answers_differ"] <= 0.5, result


def test_raw_logits_undo_the_folded_operating_point_and_temperature():
    from ml.train.metrics import softmax
    from ml.train.quantize import raw_logits

    z = np.random.default_rng(0).normal(size=(5, len(CLASSES)))
    bias = np.linspace(-1, 1, len(CLASSES))
    meta = {"logit_adjustment": {"bias": bias.tolist()}, "temperature": 1.7}
    back = raw_logits(softmax((z + bias) / 1.7), meta)
    np.testing.assert_allclose(back - back[:, :1], z - z[:, :1], atol=1e-6)


def test_a_recipe_field_can_be_set_from_the_command_line():
    import argparse

    from ml.train.fit import recipe_setting

    assert recipe_setting("learning_rate=3e-4") == ("learning_rate", 3e-4)
    assert recipe_setting("cut=block_2_add") == ("cut", "block_2_add")
    assert recipe_setting("input_size=[160,224]") == ("input_size", (160, 224))
    assert recipe_setting("half_precision=False") == ("half_precision", False)
    for bad in ("no_such_field=1", "learning_rate", "name=paper"):
        with pytest.raises(argparse.ArgumentTypeError):
            recipe_setting(bad)


def test_predict_cli_writes_one_row_per_image_from_files_and_folders(tiny_run, tmp_path):
    from ml import predict

    images = tiny_run["data_dir"] / "images"
    single = sorted(images.glob("*.jpg"))[0]
    out = tmp_path / "preds.csv"
    code = predict.main(
        [
            "--model",
            str(tiny_run["model_dir"] / "skinsite.tflite"),
            "--batch-size",
            "7",
            "--out",
            str(out),
            str(single),
            str(images),
        ]
    )
    assert code == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", *CLASSES]
    assert len(rows) == 1 + len(list(images.glob("*.jpg")))
    assert rows[0]["image"] == single.stem
    for row in rows:
        assert sum(float(row[c]) for c in CLASSES) == pytest.approx(1.0, abs=1e-6)


def test_predict_cli_skips_an_unreadable_file_and_says_so(tiny_run, tmp_path, capsys):
    from ml import predict

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = sorted((tiny_run["data_dir"] / "images").glob("*.jpg"))[0]
    out = tmp_path / "preds.csv"
    code = predict.main(
        ["--model", str(tiny_run["model_dir"] / "skinsite.tflite"), "--out", str(out), str(good), str(broken)]
    )
    assert code == 1
    assert "broken.jpg" in capsys.readouterr().err
    with open(out) as f:
        assert [r["image"] for r in csv.DictReader(f)] == [good.stem]


def test_classifier_prediction_names_the_argmax_and_malignancy(tiny_run):
    from ml.serve.inference import Classifier

    classifier = Classifier(tiny_run["model_dir"] / "skinsite.tflite")
    image = sorted((tiny_run["data_dir"] / "images").glob("*.jpg"))[0]
    prediction = classifier.predict(image)
    assert set(prediction.probabilities) == set(CLASSES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.probabilities[prediction.predicted_class] == prediction.confidence
    assert prediction.malignant == (prediction.predicted_class in {"mel", "bcc", "akiec"})
    assert prediction.model_version == classifier.version


def served_with_views(tiny_run, tmp_path, views) -> Path:
    """A copy of the tiny model whose JSON asks for test-time ``views``."""
    import shutil

    for suffix in (".tflite", ".json"):
        shutil.copy(tiny_run["model_dir"] / f"skinsite{suffix}", tmp_path / f"skinsite{suffix}")
    meta = json.loads((tmp_path / "skinsite.json").read_text())
    (tmp_path / "skinsite.json").write_text(json.dumps({**meta, "views": views}))
    return tmp_path / "skinsite.tflite"


def test_a_classifier_with_test_time_views_averages_the_views_log_probabilities(tiny_run, tmp_path):
    from ml.serve.inference import Classifier
    from ml.serve.preprocess import preprocess
    from ml.train.metrics import softmax

    plain = Classifier(tiny_run["model_dir"] / "skinsite.tflite")
    both = Classifier(served_with_views(tiny_run, tmp_path, ["original", "mirrored"]))
    images = sorted((tiny_run["data_dir"] / "images").glob("*.jpg"))[:4]
    batch = np.stack([preprocess(p, (64, 64)) for p in images])
    expected = softmax(
        (np.log(plain.predict_arrays(batch)) + np.log(plain.predict_arrays(batch[:, :, ::-1].copy()))) / 2
    )
    np.testing.assert_allclose(both.predict_arrays(batch), expected, atol=1e-5)
    assert sum(both.predict(images[0]).probabilities.values()) == pytest.approx(1.0)


def test_views_are_the_mirror_images_and_their_log_probabilities_are_averaged():
    from ml.serve.inference import predict_views
    from ml.train.metrics import softmax

    def predict(batch):
        """A model that sees orientation: its logits are the mean of the top-left quarter's three channels."""
        logits = np.zeros((len(batch), len(CLASSES)))
        logits[:, :3] = 4 * batch[:, :2, :2].mean(axis=(1, 2))
        return softmax(logits)

    batch = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
    corners = {
        "original": batch[:, :2, :2],
        "mirrored": batch[:, :2, -2:][:, :, ::-1],
        "upside_down": batch[:, -2:, :2][:, ::-1],
        "rotated_180": batch[:, -2:, -2:][:, ::-1, ::-1],
    }
    for views in (["original"], ["original", "mirrored"], list(corners)):
        logits = np.zeros((len(batch), len(CLASSES)))
        logits[:, :3] = np.mean([4 * corners[v].mean(axis=(1, 2)) for v in views], axis=0)
        np.testing.assert_allclose(predict_views(predict, batch, views), softmax(logits), atol=1e-6)
    assert np.abs(predict_views(predict, batch, list(corners)) - predict(batch)).max() > 1e-2


def test_a_model_asking_for_an_unknown_view_is_refused(tiny_run, tmp_path):
    from ml.serve.inference import Classifier

    with pytest.raises(ValueError, match="unknown test-time views"):
        Classifier(served_with_views(tiny_run, tmp_path, ["original", "sideways"]))


def test_quantize_refuses_a_model_served_in_int8_already(tiny_run, tmp_path):
    from ml.train.quantize import compare

    folder = tmp_path / "served"
    folder.mkdir()
    for name in ("skinsite.keras", "skinsite.tflite"):
        (folder / name).write_bytes((tiny_run["model_dir"] / name).read_bytes())
    meta = json.loads((tiny_run["model_dir"] / "skinsite.json").read_text())
    (folder / "skinsite.json").write_text(json.dumps(meta | {"served_precision": "int8"}))
    with pytest.raises(ValueError, match="int8 already"):
        compare(folder / "skinsite.keras", tiny_run["data_dir"], tmp_path / "out")


def test_compare_cli_judges_a_served_model_on_held_out_halves_of_val(tiny_run, tmp_path, capsys):
    from ml.study.compare import main

    model = tiny_run["model_dir"] / "skinsite.tflite"
    meta = json.loads(model.with_suffix(".json").read_text())
    out = tmp_path / "compare.json"
    out.write_text(json.dumps({"earlier": {"version": "v-earlier"}, "tiny": {"version": "stale"}}))
    main(
        [
            f"tiny={model}",
            f"again={model}",
            "--data-dir",
            str(tiny_run["data_dir"]),
            "--repeats",
            "3",
            "--out",
            str(out),
        ]
    )
    written = json.loads(out.read_text())
    assert written["earlier"] == {"version": "v-earlier"}  # other models' rows stay, this one's is replaced
    row = written["tiny"]
    assert row["version"] == meta["version"] and row["networks"] == 1 and row["repeats"] == 3
    assert row["seeds"] == [meta["recipe"]["seed"]] and row["backends"] == ["tensorflow"]
    assert row["recorded_val"]["accuracy"] == meta["val"]["accuracy"]
    assert 0 <= row["raw_macro_auc"] <= 1 and 0 <= row["raw_melanoma_auc"] <= 1
    held = row["held_out_point"]
    assert 0 <= held["accuracy"]["mean"] <= 1 and 0 <= held["balanced_accuracy"]["mean"] <= 1
    assert held["accuracy_plus_balanced"]["mean"] == pytest.approx(
        held["accuracy"]["mean"] + held["balanced_accuracy"]["mean"]
    )
    # The first model named is the reference (the shipped one is not among them); the same file pairs to 0.
    assert len(held["accuracy_plus_balanced"]["halves"]) == 6 and "paired_with_reference" not in row
    assert written["again"]["paired_with_reference"] == {
        "reference": meta["version"],
        "mean": 0.0,
        "sd": 0.0,
        "better_share": 0.0,
    }
    printed = capsys.readouterr().out
    assert "tiny (1 network(s)" in printed and f"against {meta['version']} on the same halves: +0.0000" in printed
    with pytest.raises(SystemExit):
        main([str(model)])  # NAME= missing


def test_bench_cli_prints_and_stores_the_figures_with_the_machine(tiny_run, tmp_path, capsys):
    from ml.study.bench import main

    out = tmp_path / "bench.json"
    main(["--model", str(tiny_run["model_dir"] / "skinsite.tflite"), "--repeats", "10", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["machine"]["cores"] >= 1
    for path in ("litert", "tf.function", "keras.predict"):
        row = figures[path]
        assert 0 < row["batch1_p50_ms"] <= row["batch1_p95_ms"] and row["batch32_images_per_s"] > 0
    printed = capsys.readouterr().out
    assert figures["machine"]["cpu"] in printed and "litert" in printed


def test_mixed_batches_mix_activations_targets_and_weights_alike():
    from ml.train.fit import mixed_batch

    rng = np.random.default_rng(0)
    n = 24
    x = rng.normal(size=(n, 6, 4, 3)).astype(np.float32)
    target = np.eye(n, dtype=np.float32)  # one class per example: a mixed target names the pair and the share
    weight = rng.uniform(0.5, 2, n).astype(np.float32)
    same = mixed_batch(x, target, weight, rng, 0.0, 0.0)
    assert all(a is b for a, b in zip(same, (x, target, weight), strict=True))  # off: the batch as it was

    for mixup, cutmix in ((0.3, 0.0), (0.0, 1.0)):
        before = x.copy()
        mixed, mixed_target, mixed_weight = mixed_batch(x, target, weight, np.random.default_rng(1), mixup, cutmix)
        np.testing.assert_array_equal(x, before)  # the cached activations are not changed
        assert not np.allclose(mixed, x)
        np.testing.assert_allclose(mixed_target.sum(axis=1), 1, rtol=1e-6)
        for i in range(n):
            own = mixed_target[i, i]
            others = np.delete(np.arange(n), i)
            j = others[np.argmax(mixed_target[i, others])]
            assert mixed_target[i, j] == pytest.approx(1 - own, abs=1e-6)  # one partner at most
            np.testing.assert_allclose(mixed_weight[i], own * weight[i] + (1 - own) * weight[j], rtol=1e-5)
            if mixup:
                np.testing.assert_allclose(mixed[i], own * x[i] + (1 - own) * x[j], atol=1e-5)
            else:  # a rectangle of the partner's map, as large as the partner's share
                pasted = np.all(mixed[i] == x[j], axis=-1) & np.any(mixed[i] != x[i], axis=-1)
                assert np.all(mixed[i][~pasted] == x[i][~pasted])
                assert pasted.mean() == pytest.approx(1 - own, abs=1e-6)
                if pasted.any():
                    rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
                    assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()


def test_robustness_measures_the_served_file_on_every_changed_copy_of_test(tiny_run, capsys):
    from ml.serve.inference import Classifier
    from ml.study.robustness import CHANGES, main, measure
    from ml.train import data
    from ml.train.metrics import summary

    model = tiny_run["model_dir"] / "skinsite.tflite"
    result = measure(model, tiny_run["data_dir"], chunk=5)  # chunks that split the part
    test = data.part(data.load_dataset(tiny_run["data_dir"]), "test")
    assert result["n"] == len(test) and result["model_version"] == Classifier(model).version
    rows = {r["change"]: r for r in result["changes"]}
    assert list(rows) == list(CHANGES)
    # The unchanged row is the served file's own figures on the test images.
    classifier = Classifier(model)
    probs = np.concatenate([classifier.predict_arrays(classifier_input(classifier, p)) for p in test["path"]])
    expected = summary(test["label"].to_numpy(), probs)
    assert rows["unchanged"]["answers_changed"] == 0.0
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall"):
        assert rows["unchanged"][key] == pytest.approx(expected[key])
        assert all(0 <= r[key] <= 1 or np.isnan(r[key]) for r in rows.values())

    main(["--model", str(model), "--data-dir", str(tiny_run["data_dir"])])
    printed = capsys.readouterr().out
    assert f"on {len(test)} test images" in printed and "JPEG quality 40" in printed


def classifier_input(classifier, path):
    from ml.serve.preprocess import preprocess

    return preprocess(path, classifier.input_size)[None]
