"""One preprocessing path: training and serving turn the same file into the same array."""

import io

import numpy as np
import pytest
from PIL import Image

from ml.serve.preprocess import INPUT_SIZE, load_image, preprocess
from ml.train import features

EXIF_ORIENTATION = 0x0112


def jpeg_bytes(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def lesion() -> Image.Image:
    """200x150 with a dark blob in the upper-left quadrant, so rotation is visible."""
    array = np.full((150, 200, 3), 210, np.uint8)
    array[10:60, 10:80] = (80, 40, 30)
    return Image.fromarray(array)


def test_training_and_serving_make_the_same_array_from_the_same_file(tmp_path):
    path = tmp_path / "lesion.jpg"
    path.write_bytes(jpeg_bytes(lesion(), orientation=6))
    training = features._load(str(path), copy=0, index=0, seed=0, size=INPUT_SIZE)  # the cache builder's path
    with path.open("rb") as handle:  # the worker reads the stored upload as a file object
        serving = preprocess(handle)
    np.testing.assert_array_equal(training, serving)
    np.testing.assert_array_equal(preprocess(path.read_bytes()), serving)
    assert serving.shape == (*INPUT_SIZE, 3) and serving.dtype == np.float32
    assert -1.0 <= serving.min() and serving.max() <= 1.0


def test_exif_orientation_is_applied():
    upright = load_image(jpeg_bytes(lesion()))
    # Stored turned a quarter clockwise, with the tag that tells a viewer to turn it back.
    rotated = load_image(jpeg_bytes(lesion().transpose(Image.ROTATE_270), orientation=8))
    assert rotated.size == upright.size == (200, 150)
    difference = np.abs(np.asarray(rotated, float) - np.asarray(upright, float)).mean()
    assert difference < 3  # only JPEG noise apart


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_other_colour_modes_become_rgb(mode):
    if mode == "I;16":  # a real 16-bit grey image spans 0..65535
        source = Image.fromarray(np.asarray(lesion().convert("L"), np.uint16) * 257)
        assert source.mode == "I;16"
    else:
        source = lesion().convert(mode)
    array = preprocess(source)
    assert array.shape == (*INPUT_SIZE, 3)
    assert array.std() > 0.05  # the picture survived, not a blank


def test_alpha_is_flattened_on_white():
    transparent = Image.new("RGBA", (200, 150), (0, 0, 0, 0))
    assert preprocess(transparent).min() == pytest.approx(1.0)
