"""The colour-constancy layer (ml.train.model.ShadesOfGray): it undoes a colour cast, and a model holding it saves,
loads, caches and exports (float and int8 TFLite) like any other, the int8 file keeping the layer in float."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.training

SIZE = (64, 96)
CAST = np.array([1.15, 1.0, 0.8])  # a warmer light, or another camera's white balance


def unit_images(n: int = 4, seed: int = 3) -> np.ndarray:
    """Images in [0, 1] kept low enough that a cast never clips, with a darker blob as a lesion."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.8, (n, *SIZE, 3))
    images[:, 20:44, 30:66] *= rng.uniform(0.3, 0.6, (n, 1, 1, 3))
    return images.astype(np.float32)


def norms(unit: np.ndarray) -> np.ndarray:
    """Each image's channels' 6th-power means, (n, 3)."""
    return (unit.astype(np.float64) ** 6).mean(axis=(1, 2)) ** (1 / 6)


def cast(unit: np.ndarray) -> np.ndarray:
    """:data:`CAST` applied, scaled per image so that its overall brightness (the mean of :func:`norms`, which the
    layer keeps) stays: what is left for the layer to undo is the colour alone."""
    brightness = (norms(unit) * CAST).mean(axis=1) / norms(unit).mean(axis=1)
    return (unit * (np.asarray(CAST) / brightness[:, None])[:, None, None, :]).astype(np.float32)


def as_input(unit: np.ndarray) -> np.ndarray:
    return (unit * 2.0 - 1.0).astype(np.float32)  # MobileNetV2's [-1, 1], as ml.serve.preprocess makes it


def layer(power: float = 6.0):
    import keras

    from ml.train.model import ShadesOfGray

    inputs = keras.Input((*SIZE, 3))
    return keras.Model(inputs, ShadesOfGray(power)(inputs))


def test_a_colour_cast_is_undone_and_the_image_otherwise_kept():
    unit = unit_images()
    model = layer()
    plain = model.predict(as_input(unit), verbose=0)
    np.testing.assert_allclose(model.predict(as_input(cast(unit)), verbose=0), plain, atol=2e-5)
    # The cast did reach the layer: its input differs by far more than its outputs do.
    assert np.abs(as_input(cast(unit)) - as_input(unit)).mean() > 0.05
    # A cast that also darkens or brightens: the colours are undone, a brightness factor is left.
    plain_unit = (plain + 1) / 2
    darker = (model.predict(as_input(unit * CAST.astype(np.float32)), verbose=0) + 1) / 2
    factor = (darker * plain_unit).sum(axis=(1, 2, 3)) / (plain_unit**2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(darker, plain_unit * factor[:, None, None, None], atol=2e-5)
    assert (np.abs(factor - 1) < 0.05).all()

    # The channels' 6th-power means come out equal, and their mean (the overall brightness) is kept.
    balanced = norms(plain_unit)
    np.testing.assert_allclose(balanced, np.repeat(balanced.mean(axis=1, keepdims=True), 3, axis=1), rtol=1e-4)
    np.testing.assert_allclose(balanced.mean(axis=1), norms(unit).mean(axis=1), rtol=1e-4)


def test_a_grey_image_is_left_as_it_is_and_a_black_channel_breaks_nothing():
    model = layer()
    grey = np.repeat(unit_images()[..., :1], 3, axis=-1)
    np.testing.assert_allclose(model.predict(as_input(grey), verbose=0), as_input(grey), atol=1e-5)
    no_blue = unit_images()
    no_blue[..., 2] = 0.0
    out = model.predict(as_input(no_blue), verbose=0)
    assert np.isfinite(out).all() and out.min() >= -1.0 and out.max() <= 1.0


def test_colour_constancy_gets_its_own_activation_cache():
    from ml.train.features import cache_key

    plain = cache_key("block_5_add", (224, 288), 2)
    assert plain == "block_5_add_224x288_seed2"  # the caches made before the layer existed keep their names
    assert cache_key("block_5_add", (224, 288), 2, colour_constancy=6.0) == plain + "_constancy6"


@pytest.fixture(scope="module")
def classifier():
    """A tiny untrained classifier with the layer (on tests/tiny_nets.py's toy network: what is tested is the
    layer's own path through saving, exporting and quantising), its head scaled so that its answers vary with
    the image."""
    import keras

    from ml.train.model import COLOUR_CONSTANCY_LAYER
    from tests.tiny_nets import toy_classifier

    model = toy_classifier(SIZE, units=8, seed=0, colour_constancy=6.0)
    assert [layer.name for layer in model.layers][1] == COLOUR_CONSTANCY_LAYER
    hidden = keras.Model(model.input, model.get_layer("fc").output).predict(as_input(unit_images()), verbose=0)
    head = model.get_layer("probs")
    kernel, bias = head.get_weights()
    head.set_weights([kernel / np.abs(hidden).mean(), bias])
    return model


def test_a_model_with_the_layer_loads_back_and_exports_to_tflite_alike(classifier, tmp_path):
    import keras

    from ml.serve.inference import LiteModel
    from ml.train.export import to_tflite

    x = as_input(unit_images())
    expected = classifier.predict(x, verbose=0)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images get different answers
    classifier.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(x, verbose=0), expected, atol=1e-6)
    served = LiteModel(to_tflite(classifier, tmp_path / "m.tflite"))
    np.testing.assert_allclose(served(x), expected, atol=1e-4)


def test_the_int8_file_keeps_the_layer_in_float_and_is_blind_to_a_colour_cast(classifier, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from ml.serve.inference import LiteModel
    from ml.train.export import converter_of, float_layer_nodes, to_int8_tflite

    unit = unit_images(8)
    with converter_of(classifier) as converter:
        nodes = float_layer_nodes(classifier, converter)
    assert any("Pow" in node for node in nodes), nodes
    file = to_int8_tflite(classifier, tmp_path / "m.tflite", as_input(unit_images(16, seed=9)))
    kinds = {d["name"]: d["dtype"] for d in Interpreter(str(file)).get_tensor_details()}
    assert any(kind == np.int8 for kind in kinds.values())  # the convolutions are int8
    ops = [node for node in nodes if node in kinds and "reduction_indices" not in node]
    assert len(ops) >= 8 and all(kinds[node] == np.float32 for node in ops), {node: kinds.get(node) for node in nodes}

    served = LiteModel(file)
    plain = served(as_input(unit))
    np.testing.assert_allclose(served(as_input(cast(unit))), plain, atol=1e-4)
    np.testing.assert_allclose(plain.sum(axis=1), 1.0, atol=1e-5)
    no_blue = unit.copy()
    no_blue[..., 2] = 0.0  # 8 bits would round this channel's mean to 0 and divide by it
    assert np.isfinite(served(as_input(no_blue))).all()


def test_networks_with_the_layer_share_it_in_an_ensemble_and_never_join_ones_without(classifier):
    from ml.train.ensemble import combine
    from ml.train.metrics import softmax
    from ml.train.model import COLOUR_CONSTANCY_LAYER
    from tests.tiny_nets import CUT as cut
    from tests.tiny_nets import toy_classifier

    other = toy_classifier(SIZE, units=8, seed=1, colour_constancy=6.0)
    below = [layer.name for layer in classifier.layers].index(cut) + 1
    for mine, theirs in zip(classifier.layers[:below], other.layers[:below], strict=True):
        theirs.set_weights(mine.get_weights())
    pair = combine([classifier, other], cut)
    assert [layer.name for layer in pair.layers].count(COLOUR_CONSTANCY_LAYER) == 1
    x = as_input(unit_images())
    expected = softmax(np.mean([np.log(m.predict(x, verbose=0)) for m in (classifier, other)], axis=0))
    np.testing.assert_allclose(pair.predict(x, verbose=0), expected, atol=1e-5)

    plain = toy_classifier(SIZE, units=8, seed=1)
    with pytest.raises(ValueError, match="differ below the cut"):
        combine([classifier, plain], cut)


def test_the_card_says_how_to_train_such_members_again():
    from ml.study.card import SETTINGS_OFF, constancy, reproduce
    from ml.train.fit import Recipe

    # The card's copy of the options' defaults (ml.evaluate does not load Keras) is the recipe's own.
    assert SETTINGS_OFF == {key: getattr(Recipe(name="defaults"), key) for key in SETTINGS_OFF}

    def member(seed, **settings):
        return {"recipe": {"seed": seed, "copies": 4, "epochs": 12, "augmentation": "mild", **settings}}

    meta = {"members": [member(0, colour_constancy=6.0), member(1, colour_constancy=6.0)], "served_precision": "int8"}
    commands = reproduce(meta)
    assert commands.count("--set colour_constancy=6.0") == 2
    assert "--seed 1 --copies 4 --epochs 12 --set colour_constancy=6.0 --out ml/runs/member1" in commands
    assert "--set augmentation" not in commands  # an option left at its default is not named
    assert "--set" not in reproduce({"members": [member(0), member(1)]})
    assert "6th-power" in constancy(meta["members"][0]["recipe"]) and constancy({}) == ""
