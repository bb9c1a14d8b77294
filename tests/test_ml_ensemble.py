"""ml.train.ensemble on tiny untrained networks (tests/tiny_nets.py's toy network, whose layers the ensemble code reads
by the names MobileNetV2's have): the combined model averages its members' logits, shares their frozen lower
blocks, exports to TFLite, and Grad-CAM and the gate's features work on it."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from ml.serve.labels import CLASSES
from tests.tiny_nets import CUT, toy_classifier

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.training

SIZE = (64, 96)


def tiny_members(n: int = 2):
    """``n`` tiny classifiers with different upper weights and the same weights up to ``CUT``."""
    import keras

    members = [toy_classifier(SIZE, units=8, seed=k) for k in range(n)]

    below = [layer.name for layer in members[0].layers].index(CUT) + 1
    for other in members[1:]:
        for mine, theirs in zip(members[0].layers[:below], other.layers[:below], strict=True):
            theirs.set_weights(mine.get_weights())
    # Untrained, the hidden vector is small (about 0.01): scale each head so that its logits are of order one
    # and differ between inputs and members.
    for member in members:
        hidden = keras.Model(member.input, member.get_layer("fc").output).predict(inputs(), verbose=0)
        assert np.abs(hidden).max() > 0, f"{member.name}'s untrained activations die out: build it from another seed"
        head = member.get_layer("probs")
        kernel, bias = head.get_weights()
        head.set_weights([kernel / np.abs(hidden).mean(), bias])
    return members


def inputs(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, *SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def trio():
    """Three members and the model combining them, built once for the module."""
    from ml.train.ensemble import combine

    members = tiny_members(3)
    return members, combine(members, CUT)


def test_the_combined_model_gives_the_softmax_of_the_members_mean_logits(trio):
    from ml.train.metrics import softmax

    members, model = trio
    x = inputs()
    member_logits = [np.log(m.predict(x, verbose=0)) for m in members]
    expected = softmax(np.mean(member_logits, axis=0))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    # Not just one member's answer.
    assert np.abs(expected - members[0].predict(x, verbose=0)).max() > 1e-3


def test_the_members_share_one_copy_of_the_lower_blocks(trio):
    members, model = trio
    single = sum(np.prod(w.shape) for w in members[0].weights)
    below = sum(
        np.prod(w.shape)
        for layer in members[0].layers[: [la.name for la in members[0].layers].index(CUT) + 1]
        for w in layer.weights
    )
    combined = sum(np.prod(w.shape) for w in model.weights)
    # Three upper parts, one lower part and one output bias (the mean of theirs).
    assert combined == 3 * single - 2 * below - 2 * len(CLASSES)


def test_an_ensemble_combined_with_another_network_counts_each_of_its_networks_once(trio):
    from ml.train.ensemble import combine
    from ml.train.metrics import softmax
    from ml.train.model import member_layers

    members, model = trio
    pair = combine(members[:2], CUT)
    grown = combine([pair, members[2]], CUT)  # how a third network joins a shipped pair
    x = inputs()
    expected = softmax(np.mean([np.log(m.predict(x, verbose=0)) for m in members], axis=0))
    np.testing.assert_allclose(grown.predict(x, verbose=0), expected, atol=1e-5)
    names = [layer.name for layer in member_layers(grown, "out_relu")]
    assert names == ["member0_out_relu", "member1_out_relu", "member2_out_relu"]
    assert sorted(layer.name for layer in grown.layers) == sorted(layer.name for layer in model.layers)
    assert sum(np.prod(w.shape) for w in grown.weights) == sum(np.prod(w.shape) for w in model.weights)


def test_members_that_differ_below_the_cut_are_refused(trio):
    from ml.train.ensemble import combine

    stranger = toy_classifier(SIZE, units=8, seed=7)
    with pytest.raises(ValueError, match="differ below the cut"):
        combine([trio[0][0], stranger], CUT)


def test_the_combined_model_exports_to_tflite_with_the_same_probabilities(trio, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from ml.train.export import to_tflite

    model = trio[1]
    to_tflite(model, tmp_path / "ensemble.tflite")
    interpreter = Interpreter(model_path=str(tmp_path / "ensemble.tflite"))
    interpreter.allocate_tensors()
    x = inputs(1)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(lite, model.predict(x, verbose=0), atol=1e-4)


def test_grad_cam_on_an_ensemble_adds_the_members_maps_and_averages_their_features(trio):
    import keras

    from ml.study.keras_gradcam import GradCam
    from ml.train.model import member_layers

    members, model = trio
    names = [layer.name for layer in member_layers(model, "out_relu")]
    assert names == ["member0_out_relu", "member1_out_relu", "member2_out_relu"]
    x = inputs(1)
    grad_cam = GradCam(model, SIZE)
    # By hand: each member's map before the ReLU, from its own logit; the ensemble's score is their mean.
    import tensorflow as tf

    def by_hand(class_index: int) -> np.ndarray:
        maps = []
        for m in members:
            net = keras.Model(m.input, [m.get_layer("out_relu").output, m.get_layer("probs").input])
            kernel, bias = m.get_layer("probs").get_weights()
            with tf.GradientTape() as tape:
                activations, hidden = net(tf.constant(x), training=False)
                score = (tf.matmul(hidden, kernel) + bias)[0, class_index]
            grads = tape.gradient(score, activations)
            maps.append(tf.einsum("bhwc,bc->bhw", activations, tf.reduce_mean(grads, axis=(1, 2)))[0].numpy())
        return np.mean(maps, axis=0)

    heats = []
    for class_index in range(len(CLASSES)):
        heat, pooled, probs = grad_cam(x[0], class_index)
        assert heat.shape == (2, 3) and (heat >= 0).all()
        linear = by_hand(class_index)
        np.testing.assert_allclose(heat, np.maximum(linear, 0), rtol=1e-3, atol=1e-6 * np.abs(linear).max())
        heats.append(heat)
    # An untrained network's map for one class may be negative everywhere (all zero after the ReLU); not for all.
    assert max(h.max() for h in heats) > 0
    member_pools = [keras.Model(m.input, m.get_layer("pool").output).predict(x, verbose=0)[0] for m in members]
    np.testing.assert_allclose(pooled, np.mean(member_pools, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0)[0], atol=1e-5)
    batched = grad_cam.pooled_features(np.concatenate([x, x]))
    np.testing.assert_allclose(batched[0], pooled, rtol=1e-4, atol=1e-5)


def saved_members(folder, n: int = 2):
    """``n`` tiny members saved as ``ml.train.fit`` saves a model, each with its own operating point and temperature
    folded in; returns their files and their raw probabilities on ``inputs()``."""
    from ml.train.fit import RECIPES
    from ml.train.model import fold_output_adjustment

    recipe = replace(RECIPES["improved"], input_size=SIZE, alpha=0.35, units=8, cut=CUT)
    files = []
    x = inputs()
    raw = []
    for k, member in enumerate(tiny_members(n)):
        raw.append(np.log(member.predict(x, verbose=0)))
        bias, temperature = np.linspace(-0.5, 0.5, len(CLASSES)) * (k + 1), 1.5 + k
        fold_output_adjustment(member, bias, temperature)
        file = folder / f"member{k}" / "skinsite.keras"
        file.parent.mkdir(parents=True)
        member.save(file)
        meta = {
            "recipe": asdict(replace(recipe, seed=k)),
            "version": f"member-{k}",
            "history": [],
            "kept_epoch": None,
            "train_seconds": 10.0 * (k + 1),
            "backend": ("tensorflow", "jax")[k % 2],
            "val": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_auc": 0.5, "melanoma_recall": 0.5},
            "images": {"train": 56, "val": 21, "test": 21},
            "logit_adjustment": {"bias": bias.tolist()},
            "temperature": temperature,
        }
        file.with_suffix(".json").write_text(json.dumps(meta))
        files.append(file)
    return files, raw


def test_build_undoes_each_members_operating_point_then_chooses_one_for_the_ensemble(tmp_path):
    from ml.train.calibrate import load_raw
    from ml.train.ensemble import build
    from tests.test_ml_pipeline import synthetic_ham

    data_dir = synthetic_ham(tmp_path / "ham")
    files, raw = saved_members(tmp_path)
    x = inputs()
    for file, logits in zip(files, raw, strict=True):
        unfolded, _ = load_raw(file)  # the member's own operating point and temperature undone
        np.testing.assert_allclose(unfolded.predict(x, verbose=0), np.exp(logits), atol=1e-5)

    # half=False: float32 members, as they were written (rounding to float16 has tests of its own below).
    result = build(files, data_dir, tmp_path / "out", views=("original", "rotated_180"), half=False)
    assert result["version"].startswith("mnv2-ham10000-ensemble-")
    assert [m["version"] for m in result["members"]] == ["member-0", "member-1"]
    assert [m["recipe"]["seed"] for m in result["members"]] == [0, 1]
    assert [m["backend"] for m in result["members"]] == ["tensorflow", "jax"]  # where each network was trained
    assert result["train_seconds"] == 30.0
    assert {"tau", "melanoma_bias", "bias"} <= set(result["logit_adjustment"]) and result["temperature"] > 0
    assert result["views"] == ["original", "rotated_180"]  # chosen on val over the views it will be served with
    assert (tmp_path / "out" / "skinsite.tflite").exists()
    assert json.loads((tmp_path / "out" / "skinsite.json").read_text())["version"] == result["version"]

    # The built pair and one more network: the JSON lists the pair's members, then the newcomer.
    grown = build([tmp_path / "out" / "skinsite.keras", files[1]], data_dir, tmp_path / "grown", half=False)
    assert [m["version"] for m in grown["members"]] == ["member-0", "member-1", "member-1"]
    assert grown["train_seconds"] == 50.0


def test_an_int8_build_chooses_its_operating_point_on_the_int8_files_own_val_outputs(tmp_path):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from ml.serve.inference import Classifier, LiteModel
    from ml.serve.preprocess import preprocess
    from ml.train import data
    from ml.train.calibrate import int8_calibration, load_raw, recalibrate
    from ml.train.ensemble import build
    from ml.train.export import to_int8_tflite
    from ml.train.metrics import softmax, summary
    from tests.test_ml_pipeline import synthetic_ham

    data_dir = synthetic_ham(tmp_path / "ham")
    files, _ = saved_members(tmp_path)
    out = tmp_path / "out"
    result = build(files, data_dir, out, half=False, int8=True)
    assert result["int8_calibration_images"] == 8 * len(CLASSES)  # all of synthetic_ham's train part
    meta = json.loads((out / "skinsite.json").read_text())
    assert meta["served_precision"] == "int8" and meta["recipe"]["int8"] is True
    assert np.int8 in {d["dtype"] for d in Interpreter(model_path=str(out / "skinsite.tflite")).get_tensor_details()}

    val = data.part(data.load_dataset(data_dir), "val")
    arrays = np.stack([preprocess(p, SIZE) for p in val["path"]])
    served = Classifier(out / "skinsite.tflite").predict_arrays(arrays)
    in_float = keras.models.load_model(out / "skinsite.keras").predict(arrays, verbose=0)
    # The JSON's val figures are the served int8 file's own, which are not the Keras model's. How far the Keras
    # model's ECE lands from the int8 file's depends on the CPU's kernels (0.0007 and 0.014 in two runs on two
    # machines, before the networks were seeded), so it is told apart by a margin well above the tolerance the
    # int8 figures are matched to, not by a fixed gap.
    y = val["label"].to_numpy()
    figures = summary(y, served)
    for key in ("accuracy", "balanced_accuracy", "melanoma_recall", "ece"):
        assert figures[key] == pytest.approx(result["val"][key], abs=1e-9), key
    assert abs(summary(y, in_float)["ece"] - result["val"]["ece"]) > 1e-6
    assert np.abs(served - in_float).max() > 1e-4  # beyond a float export's own error (1e-4 above)
    # And the point was chosen on the int8 outputs: an int8 export of the raw model, made as build makes it, gives
    # the figures recorded before the temperature; the Keras model's own outputs give others.
    raw, meta = load_raw(out / "skinsite.keras")
    bias = np.asarray(result["logit_adjustment"]["bias"])
    export = to_int8_tflite(raw, tmp_path / "raw.tflite", int8_calibration(meta["recipe"], data_dir))

    def ece_before_temperature(probs):
        return summary(y, softmax(np.log(np.clip(probs, 1e-12, None)) + bias))["ece"]

    recorded = result["val_before_calibration"]["ece"]
    # Within float32 rounding of the figure (3e-8 seen), where the Keras model's outputs land 5e-5 away.
    assert ece_before_temperature(LiteModel(export).in_batches(arrays)) == pytest.approx(recorded, abs=2e-7)
    assert abs(ece_before_temperature(raw.predict(arrays, verbose=0)) - recorded) > 1e-6

    # Choosing again keeps it int8; the same calibration images give the same point and the same outputs. So
    # does building again from the int8 model, unless told otherwise.
    again = recalibrate(out / "skinsite.keras", data_dir)
    assert again["served_precision"] == "int8"
    assert build([out / "skinsite.keras"], data_dir, tmp_path / "rebuilt", half=False)["served_precision"] == "int8"
    floated = build([out / "skinsite.keras"], data_dir, tmp_path / "floated", half=False, int8=False)
    assert "served_precision" not in floated and floated["recipe"]["int8"] is False
    assert again["logit_adjustment"]["bias"] == pytest.approx(result["logit_adjustment"]["bias"])
    np.testing.assert_allclose(Classifier(out / "skinsite.tflite").predict_arrays(arrays), served, atol=1e-5)


def test_a_half_precision_build_rounds_every_member_so_a_float32_one_joins_a_rounded_ensemble(trio):
    import keras

    from ml.train.ensemble import combine, combine_rounded
    from ml.train.export import round_to_half

    members, _ = trio
    copies = [keras.models.clone_model(m) for m in members[:2]]
    for copy, member in zip(copies, members[:2], strict=True):
        copy.set_weights([w / np.abs(w).max() if w.size and np.abs(w).max() > 1e4 else w for w in member.get_weights()])
    round_to_half(copies[0])
    with pytest.raises(ValueError, match="differ below the cut"):  # float32 lower blocks against rounded ones
        combine(copies, CUT)
    round_to_half(copies[1])
    pair = combine(copies, CUT)

    def rounded(layer):
        return all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in layer.get_weights())

    # Every copied layer stays rounded. The output layer averages the two heads, and half of a float16 value
    # below its normal range (or a mean of two) need not be one: build rounds the combined model once more.
    assert all(rounded(layer) for layer in pair.layers if layer.name != "probs")
    kernel, bias = pair.get_layer("probs").get_weights()
    heads = [copy.get_layer("probs").get_weights() for copy in copies]
    np.testing.assert_array_equal(kernel, np.concatenate([k for k, _ in heads]) / 2)
    np.testing.assert_array_equal(bias, (heads[0][1] + heads[1][1]) / 2)
    # What build combines: every weight rounded, the averaged head to the float16 value nearest the mean.
    shipped = combine_rounded(copies, CUT)
    assert all(rounded(layer) for layer in shipped.layers)
    np.testing.assert_array_equal(
        shipped.get_layer("probs").get_weights()[0], kernel.astype(np.float16).astype(np.float32)
    )


def test_weights_beyond_float16_range_are_refused_not_turned_into_infinity(trio):
    import keras

    from ml.train.export import round_to_half

    members, _ = trio
    copy = keras.models.clone_model(members[0])
    copy.set_weights(members[0].get_weights())
    kernel, bias = copy.get_layer("probs").get_weights()
    kernel[0, 0] = 1e5  # past float16's largest finite value, 65504
    copy.get_layer("probs").set_weights([kernel, bias])
    before = [w.copy() for w in copy.get_weights()]
    with pytest.raises(ValueError, match="beyond float16's range"):
        round_to_half(copy)
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), before, strict=True))  # nothing changed


def test_the_numpy_grad_cam_is_the_keras_grad_cam_of_an_ensemble(trio, tmp_path):
    """ml.serve.gradcam's closed form, from the members' activations and the stored head, against TensorFlow's gradients."""
    import keras

    from ml.serve.gradcam import Head
    from ml.study.keras_gradcam import GradCam
    from ml.train.export import head_weights
    from ml.train.model import member_layers

    _, model = trio
    np.savez(tmp_path / "head.npz", **head_weights(model))
    head = Head.load(tmp_path / "head.npz")
    assert head.members == 3
    convs = keras.Model(model.input, [layer.output for layer in member_layers(model, "out_relu")])
    grad_cam = GradCam(model, SIZE)
    for i, x in enumerate(inputs(3)):
        activations = [a[0] for a in convs.predict(x[None], verbose=0)]
        for class_index in (i, 4):
            heat, pooled, probs = grad_cam(x, class_index)
            np.testing.assert_allclose(head.cam(activations, class_index), heat, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(head.features([a[None] for a in activations])[0], pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(head.probabilities([a[None] for a in activations])[0], probs, atol=1e-6)


def test_the_companion_file_gives_the_served_files_probabilities_and_the_activations(trio, tmp_path):
    from ml.serve.gradcam import Head
    from ml.serve.inference import LiteModel
    from ml.train.export import to_tflite, write_explainer

    _, model = trio
    served = to_tflite(model, tmp_path / "m.tflite", half=False)
    entry = write_explainer(model, served, inputs(4))
    assert (entry["networks"], entry["activations_int8"]) == (3, False)
    probs, *activations = LiteModel(tmp_path / entry["file"]).outputs(inputs(4))
    np.testing.assert_array_equal(probs, LiteModel(served)(inputs(4)))
    assert [a.shape for a in activations] == [(4, 2, 3, activations[0].shape[-1])] * 3
    head = Head.load(tmp_path / entry["head"])
    np.testing.assert_allclose(head.probabilities(activations), probs, atol=1e-4)
