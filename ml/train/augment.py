"""Training-time augmentation on PIL images (before :func:`ml.serve.preprocess.to_array`).

Dermoscopic lesions have no up or down, so flips and free rotations are label-preserving; crops, zoom
and mild colour jitter mimic the spread of dermatoscopes, lighting and framing between clinics.

``acquisition`` adds what ``python -m ml.study.robustness --part val`` found the served networks sensitive to (val
melanoma recall from 0.509 to 0.806, against 0.704, under changes of light colour, contrast, saturation,
compression and focus that leave macro AUC within 0.009): per-channel gains (white balance), wider saturation
and contrast, JPEG re-compression, slight blur and a coarser sensor. A recipe variant
(``--set augmentation=acquisition``), judged on val like any other: its one run so far (seed 2, 60 minutes on a
CPU; ml/models/recipe_sweep.json) ranked val about as the base recipe's seed 2 did (macro AUC 0.949 against
0.947, melanoma AUC 0.901 against 0.908), and adding it to the shipped networks did worse at the operating point
(ml/models/val_comparison.json). More seeds would tell more. ``ml.study.robustness`` and the quality
gate's evaluation make their changed images with the same helpers below.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ml.serve.preprocess import load_image


def random_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)

    # Rotate about the centre, then zoom in enough that no empty corner is left in the frame.
    angle = float(rng.uniform(-20, 20))
    image = image.rotate(angle, resample=Image.BILINEAR)
    theta = np.deg2rad(abs(angle))
    cover = np.cos(theta) + max(width / height, height / width) * np.sin(theta)
    zoom = cover * float(rng.uniform(1.0, 1.2))
    crop_w, crop_h = width / zoom, height / zoom
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    cx = float(np.clip(cx, crop_w / 2, width - crop_w / 2))
    cy = float(np.clip(cy, crop_h / 2, height - crop_h / 2))
    box = (cx - crop_w / 2, cy - crop_h / 2, cx + crop_w / 2, cy + crop_h / 2)
    image = image.resize((width, height), Image.BILINEAR, box=box)

    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.8, 1.2)))
    return image


def channel_gains(image: Image.Image, gains) -> Image.Image:
    """Each colour channel scaled (a light of another colour temperature, another sensor's white balance)."""
    scaled = np.asarray(image, np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(scaled.round().clip(0, 255).astype(np.uint8))


def fewer_pixels(image: Image.Image, factor: float) -> Image.Image:
    """Shrunk ``factor`` times and enlarged back: fewer pixels across the lesion (a coarser sensor)."""
    small = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    return image.resize(small, Image.BOX).resize(image.size, Image.BICUBIC)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Saved as a JPEG of this quality and read back."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return load_image(buffer.getvalue())


def acquisition_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """:func:`random_augment`, then changes of the kind another dermatoscope, light or camera makes."""
    image = channel_gains(random_augment(image, rng), rng.uniform(0.9, 1.1, 3))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.8, 1.25)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.9, 1.1)))
    if rng.random() < 0.25:
        image = fewer_pixels(image, float(rng.uniform(1.3, 2.0)))
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    if rng.random() < 0.3:
        image = jpeg(image, int(rng.integers(30, 91)))
    return image


def frame_augment(image: Image.Image, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """What whole-network training (``ml.train --recipe whole``) draws anew for every image in every epoch: a
    quarter turn or none, a flip, a small free rotation, a random resized crop inside the frame (50-100% of the
    area of the largest crop of the output's aspect, that aspect varied by up to 15%), then colour, light and
    acquisition changes of the kinds :func:`acquisition_augment` makes. ``size`` (height, width): the crop is
    resized straight to it (once, not twice); default: the image's own size."""
    width, height = image.size
    out_h, out_w = size or (height, width)
    turns = int(rng.integers(4))
    if turns:
        image = image.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[turns - 1])
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-15, 15))
    image = image.rotate(angle, resample=Image.BILINEAR)
    # The largest box of the crop's aspect that the rotation leaves free of empty corners, centred.
    w, h = image.size
    theta = np.deg2rad(abs(angle))
    aspect = out_w / out_h * float(np.exp(rng.uniform(np.log(1 / 1.15), np.log(1.15))))
    box_w = min(w, h * aspect) / (np.cos(theta) + max(aspect, 1 / aspect) * np.sin(theta))
    box_h = box_w / aspect
    scale = float(np.sqrt(rng.uniform(0.5, 1.0)))  # of the side
    crop_w, crop_h = box_w * scale, box_h * scale
    # Anywhere inside that largest box.
    cx = w / 2 + float(rng.uniform(-1, 1)) * (box_w - crop_w) / 2
    cy = h / 2 + float(rng.uniform(-1, 1)) * (box_h - crop_h) / 2
    box = (cx - crop_w / 2, cy - crop_h / 2, cx + crop_w / 2, cy + crop_h / 2)
    image = image.resize((out_w, out_h), Image.BILINEAR, box=box)

    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.75, 1.25)))
    image = channel_gains(image, rng.uniform(0.92, 1.08, 3))
    if rng.random() < 0.15:
        image = fewer_pixels(image, float(rng.uniform(1.3, 2.0)))
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    if rng.random() < 0.2:
        image = jpeg(image, int(rng.integers(40, 91)))
    return image


AUGMENTATIONS = {"mild": random_augment, "acquisition": acquisition_augment, "frame": frame_augment}
