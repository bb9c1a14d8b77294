"""ml.train.augment: training-time augmentation of the cached copies, and the cache they are kept in."""

import numpy as np

from ml.train.augment import AUGMENTATIONS, acquisition_augment, random_augment
from ml.train.features import cache_key

from .test_ml_robustness import lesion_picture


def test_each_augmentation_is_seeded_and_keeps_an_rgb_image_of_the_same_size():
    image = lesion_picture()
    for name, augment in AUGMENTATIONS.items():
        a, b = (np.asarray(augment(image, np.random.default_rng([3, 1, 7]))) for _ in range(2))
        np.testing.assert_array_equal(a, b, err_msg=name)  # the same copy of an image is the same every run
        changed = augment(image, np.random.default_rng([3, 1, 7]))
        assert changed.mode == "RGB" and changed.size == image.size, name
        other = np.asarray(augment(image, np.random.default_rng([3, 2, 7])))
        assert not np.array_equal(a, other), name  # another copy differs


def test_acquisition_changes_go_beyond_the_mild_ones():
    """The same geometry and mild jitter (the same random draws first), then light colour and the rest."""
    image = lesion_picture()
    differences, channel_ratios = [], []
    for copy in range(20):
        mild = np.asarray(random_augment(image, np.random.default_rng([0, copy, 0])), np.float32)
        more = np.asarray(acquisition_augment(image, np.random.default_rng([0, copy, 0])), np.float32)
        differences.append(np.abs(more - mild).mean())
        channel_ratios.append(more.reshape(-1, 3).mean(axis=0) / mild.reshape(-1, 3).mean(axis=0))
    assert min(differences) > 0.5
    # White balance: the channels are scaled unequally, up to about 10% each way.
    spread = np.ptp(np.array(channel_ratios), axis=0)
    assert np.all(spread > 0.05) and np.all(np.array(channel_ratios) > 0.8) and np.all(np.array(channel_ratios) < 1.25)


def test_the_cache_names_every_setting_its_activations_depend_on():
    assert cache_key("block_5_add", (224, 288), 2) == "block_5_add_224x288_seed2"  # as before augmentations had names
    assert cache_key("block_5_add", (224, 288), 2, "mild") == "block_5_add_224x288_seed2"
    assert cache_key("block_5_add", (224, 288), 2, "acquisition") == "block_5_add_224x288_seed2_acquisition"


def test_cached_copies_are_made_with_the_recipes_augmentation(tmp_path):
    from ml.train import data
    from ml.train.features import cached

    from .test_ml_pipeline import synthetic_ham

    frame = data.load_dataset(synthetic_ham(tmp_path / "ham", per_part=(2, 1, 1)))

    def lower(x, training=False):  # the frozen blocks' stand-in: the input itself
        return x

    plain, mild, acquisition = (
        cached(lower, frame, "train", copy, 0, (30, 40), tmp_path / name, augmentation)
        for name, copy, augmentation in (("p", 0, "acquisition"), ("m", 1, "mild"), ("a", 1, "acquisition"))
    )
    assert plain.shape == mild.shape == acquisition.shape == (14, 30, 40, 3)
    assert (tmp_path / "a" / "train_copy1.npy").exists()
    assert np.abs(acquisition.astype(np.float32) - mild.astype(np.float32)).mean() > 0.005
    # Copy 0 is the plain image whatever the augmentation.
    np.testing.assert_array_equal(plain, cached(lower, frame, "train", 0, 0, (30, 40), tmp_path / "p2", "mild"))
