"""What an acceptable lesion image is. Forms, the API serializer, the admin and the shell command all call
`validate_image_file`, so every door refuses the same files with the same message.

Decisions (tests/test_hostile_uploads.py holds the table of every case):
- the content decides, never the name: a text, HTML, SVG or PDF file named `.jpg` is refused;
- JPG and PNG only. A camera's multi-picture JPEG (MPO) is a JPG; its first picture is the photo. GIF and
  WebP stills are refused like any other format; animated GIF, WebP and PNG (APNG) are refused with their
  own sentence, since "first frame" would analyse a picture nobody chose;
- any colour mode Pillow decodes (grayscale, palette, RGBA, CMYK, 16-bit) is accepted: the stored file stays
  the original, and the model and the report convert it to RGB (ml/serve/preprocess.py);
- width and height are the upright ones, after the EXIF orientation tag;
- the same bytes (same sha256) twice in one case are refused, naming the earlier upload; the same picture
  in another case or for another patient is fine.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import formats, timezone
from PIL import Image, ImageFile, UnidentifiedImageError

from analysis.image_files import sha256_of, upright_size

if TYPE_CHECKING:
    from analysis.models import Case

# Pillow's format name -> what the person is told. MPO is how Pillow names a camera JPEG with a preview.
ALLOWED_FORMATS = {"JPEG": "JPG", "MPO": "JPG", "PNG": "PNG"}


class UploadRejected(ValueError):
    """An upload that is not a usable lesion image; the message is meant for the person who sent it."""


def validate_image_file(upload, case: "Case | None" = None, seen: dict[str, str] | None = None) -> tuple[int, int]:
    """Check size, real content type (decoded, not the name or the header claimed), decodability, frames and
    dimensions; with `case`, that the case does not hold the same image already; with `seen` (sha256 -> name
    of the files accepted before this one in the same upload, to which this file is added), that it was not
    chosen twice. Returns the upright (width, height); leaves the file positioned at 0."""
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
        with warnings.catch_warnings(), _truncated_images_refused():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(upload) as image:
                kind = image.format
                width, height = image.size
                frames = getattr(image, "n_frames", 1)
                if frames > 1 and kind != "MPO":
                    raise UploadRejected(
                        f"This is an animated {kind} image ({frames} frames). Animated images are not accepted; "
                        "upload a single still photo (JPG or PNG)."
                    )
                if kind not in ALLOWED_FORMATS:
                    raise UploadRejected(f"This is a {kind or 'unknown'} file; only JPG and PNG images are accepted.")
                if width * height > settings.MAX_IMAGE_PIXELS:
                    raise UploadRejected(f"The image declares {width}x{height} pixels, more than is allowed.")
            # verify() must come straight after open() and leaves the image unusable: decode a fresh copy after.
            upload.seek(0)
            with Image.open(upload) as image:
                image.verify()
        upload.seek(0)
        with _truncated_images_refused(), Image.open(upload) as image:
            image.load()
            width, height = upright_size(image)
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected("The image declares more pixels than is allowed.") from None
    except UnidentifiedImageError:
        raise UploadRejected(
            "The file could not be read as a JPG or PNG image; whatever its name says, it is not one."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise UploadRejected(
            "The file could not be read as a JPG or PNG image: it looks damaged or cut short."
        ) from None
    finally:
        upload.seek(0)
    if min(width, height) < settings.MIN_IMAGE_SIDE:
        raise UploadRejected(
            f"The image is {width}x{height} pixels; at least {settings.MIN_IMAGE_SIDE} pixels a side are needed."
        )
    if case is not None or seen is not None:
        digest = sha256_of(upload)
        if seen is not None:
            if digest in seen:
                raise UploadRejected(
                    f"This is the same image as {seen[digest]} in this upload; choose each image once."
                )
            seen[digest] = getattr(upload, "name", "") or "another file"
        if case is not None:
            refuse_duplicate(case, digest)
    return width, height


@contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Pillow pads a cut-short file with gray when ImageFile.LOAD_TRUNCATED_IMAGES is set, and importing
    WeasyPrint sets it for the whole process: make sure a truncated upload fails to decode here, whatever
    else this process has imported."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def refuse_duplicate(case: "Case", digest: str) -> None:
    """Refuse an image whose bytes the case already holds, naming the earlier upload and its analysis."""
    earlier = case.images.filter(sha256=digest).order_by("uploaded_at", "pk").first()
    if earlier is None:
        return
    when = formats.date_format(timezone.localtime(earlier.uploaded_at), "j M Y H:i")
    analysis = earlier.analyses.order_by("-created_at", "-pk").first()
    raise UploadRejected(
        f"This image is already in this case: image {earlier.pk}, uploaded {when} as "
        f"{earlier.original_filename or 'an unnamed file'}"
        + (f" (analysis {analysis.pk})" if analysis else "")
        + ". The same image is not added to a case twice."
    )
