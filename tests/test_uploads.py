"""What counts as an acceptable lesion image, for every door (form, API, shell)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from analysis.uploads import UploadRejected, validate_image_file
from tests.factories import encoded, png_declaring

LESION = Image.new("RGB", (200, 150), (190, 120, 100))
JPEG = encoded(LESION, "JPEG")

REFUSED = {
    "text named .jpg": (b"hello, this is not an image", "could not be read"),
    "html named .jpg": (b"<html><body>hi</body></html>", "could not be read"),
    "svg named .jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="150"></svg>', "could not be read"),
    "pdf named .jpg": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "could not be read"),
    "truncated jpeg": (JPEG[: len(JPEG) // 2], "could not be read"),
    "zero bytes": (b"", "empty"),
    "gif": (encoded(LESION.convert("P"), "GIF"), "only JPG and PNG"),
    "1x1 png": (encoded(Image.new("RGB", (1, 1)), "PNG"), "at least"),
    "decompression bomb": (png_declaring(30000, 30000), "more pixels"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_files_are_refused_with_a_clear_message(case, settings):
    content, message = REFUSED[case]
    with pytest.raises(UploadRejected, match=message):
        validate_image_file(SimpleUploadedFile("lesion.jpg", content))


def test_a_file_over_the_size_limit_is_refused_before_decoding(settings):
    settings.MAX_UPLOAD_BYTES = 1000
    with pytest.raises(UploadRejected, match="the limit is"):
        validate_image_file(SimpleUploadedFile("big.jpg", JPEG + b"\0" * 2000))


@pytest.mark.parametrize(
    "image,fmt",
    [
        (LESION, "JPEG"),
        (LESION.convert("RGBA"), "PNG"),
        (LESION.convert("L"), "PNG"),
        (LESION.convert("CMYK"), "JPEG"),
    ],
    ids=["rgb jpeg", "rgba png", "grayscale png", "cmyk jpeg"],
)
def test_good_images_are_accepted_and_left_ready_to_store(image, fmt):
    upload = SimpleUploadedFile("ok", encoded(image, fmt))
    assert validate_image_file(upload) == (200, 150)
    assert upload.tell() == 0
