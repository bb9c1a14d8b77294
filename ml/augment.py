"""Training-time augmentation on PIL images (before :func:`ml.preprocess.to_array`).

Dermoscopic lesions have no up or down, so flips and free rotations are label-preserving; crops, zoom
and mild colour jitter mimic the spread of dermatoscopes, lighting and framing between clinics.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


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
