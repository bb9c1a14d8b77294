"""What an acceptable lesion image is. Forms, the API serializer and the shell command all call
`validate_image_file`, so every door refuses the same files with the same message."""

import warnings

from django.conf import settings
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "JPG", "PNG": "PNG"}


class UploadRejected(ValueError):
    """An upload that is not a usable lesion image; the message is meant for the person who sent it."""


def validate_image_file(upload) -> tuple[int, int]:
    """Check size, real content type (decoded, not the name or the header claimed), decodability and
    dimensions. Returns (width, height); leaves the file positioned at 0."""
    size = getattr(upload, "size", None)
    if size is None:
        upload.seek(0, 2)
        size = upload.tell()
    if size == 0:
        raise UploadRejected("The file is empty.")
    limit = settings.MAX_UPLOAD_BYTES
    if size > limit:
        raise UploadRejected(f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
    try:
        upload.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(upload) as image:
                kind = image.format
                width, height = image.size
                if kind not in ALLOWED_FORMATS:
                    raise UploadRejected(f"This is a {kind or 'unknown'} file; only JPG and PNG images are accepted.")
                if width * height > settings.MAX_IMAGE_PIXELS:
                    raise UploadRejected(f"The image declares {width}x{height} pixels, more than is allowed.")
                image.verify()  # verify() leaves the image unusable; decode a fresh copy below
        upload.seek(0)
        with Image.open(upload) as image:
            image.load()
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected("The image declares more pixels than is allowed.") from None
    except UnidentifiedImageError:
        raise UploadRejected("The file could not be read as a JPG or PNG image.") from None
    except (OSError, SyntaxError, ValueError):
        raise UploadRejected(
            "The file could not be read as a JPG or PNG image: it looks damaged or cut short."
        ) from None
    finally:
        upload.seek(0)
    if min(width, height) < settings.MIN_IMAGE_SIDE:
        raise UploadRejected(
            f"The image is {width}x{height} pixels; at least {settings.MIN_IMAGE_SIDE} pixels a side are needed."
        )
    return width, height
