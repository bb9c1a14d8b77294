"""What the service reads from an image file itself: its fingerprint (sha256) and its upright size.

Both the lesion image model (analysis/models.py) and the upload checks (analysis/uploads.py) ask; this module
knows nothing of either, so neither has to import the other.
"""

import hashlib

from PIL import Image

# EXIF orientations 5 to 8 turn the picture by 90 degrees: its upright width is the stored height.
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = {5, 6, 7, 8}


def upright_size(image: Image.Image) -> tuple[int, int]:
    """An opened image's (width, height) as it is meant to be seen, after its EXIF orientation."""
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: take the pixels as they are stored
        orientation = None
    return (height, width) if orientation in QUARTER_TURNS else (width, height)


def sha256_of(upload) -> str:
    """The fingerprint of a file's bytes (what makes "the same image"); leaves the file positioned at 0."""
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks() if hasattr(upload, "chunks") else iter(lambda: upload.read(1 << 20), b""):
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()
