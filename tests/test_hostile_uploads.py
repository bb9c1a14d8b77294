"""Hostile and odd uploads, through both doors: the case page's upload form and `POST /api/images/`.

`TABLE` below is the specification: every file, how the test makes it (Pillow, or plain bytes where the point
is that it is not an image), and what must happen. A refused file gets a clear message (shown next to the
form field, or as JSON) and leaves nothing behind: no LesionImage, no Analysis, no file under MEDIA_ROOT. An
accepted file is stored byte for byte under a generated name, decodes, has its upright width and height on
record and a queued analysis; the worker's model gives 7 probabilities for it and its PDF report renders.

Outcomes in short:
    text / HTML / SVG / PDF named .jpg ... refused: not a JPG or PNG, whatever its name says
    truncated JPEG ....................... refused: damaged or cut short
    zero bytes ........................... refused: empty
    50 MB ................................ refused: form 400 "the limit is 10 MB", API 413 "too large"
    PNG declaring 30000x30000 ............ refused: more pixels than is allowed (never decoded)
    1x1 .................................. refused: at least 64 pixels a side
    GIF, WebP, TIFF, BMP stills .......... refused: only JPG and PNG
    animated GIF, WebP, PNG (APNG) ....... refused: animated images are not accepted, upload a still photo
    grayscale, CMYK, 16-bit, RGBA, palette accepted: the original stored, the model and the report see RGB
    EXIF-rotated JPEG .................... accepted: width/height and the model's input upright
    camera JPEG with a preview (MPO) ..... accepted as a JPG
    `../` in the name, unicode, markup ... accepted: stored under a generated name, the original name's last
                                           part kept and shown escaped
    the same image twice in a case ....... refused, naming the earlier upload (in one upload or across
                                           uploads); the same image in another case is accepted
"""

import html
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.urls import reverse
from PIL import Image, ImageDraw

from analysis import reports
from analysis.models import Analysis, LesionImage
from analysis.services import submit_image
from analysis.uploads import UploadRejected
from ml.serve.inference import Classifier
from ml.serve.preprocess import load_image
from tests.factories import CaseFactory, encoded, png_declaring
from tests.test_api import client_for

pytestmark = pytest.mark.django_db

DOORS = ["form", "api"]


# How the files are made


def lesion(size: tuple[int, int] = (200, 150), mode: str = "RGB") -> Image.Image:
    """A lesion-like picture: a dark blob on skin tone."""
    picture = Image.new("RGB", size, (224, 172, 150))
    ImageDraw.Draw(picture).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), (90, 50, 40))
    return picture.convert(mode)


def fifty_megabytes() -> bytes:
    # A real PNG's first bytes, then padding: cheap to make, and the size alone must refuse it.
    return encoded(lesion(), "PNG") + b"\0" * (50 * 1024 * 1024)


def animated(fmt: str) -> bytes:
    frames = [lesion(), lesion().rotate(90), lesion().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 200x150, left half red and right half blue, tagged "rotate 90 degrees clockwise to view"
    (orientation 6, as a phone held upright writes it): seen upright it is 150x200, red on top."""
    picture = Image.new("RGB", (200, 150), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 100, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(picture, "JPEG", exif=exif, quality=95)


def camera_mpo() -> bytes:
    """A camera JPEG that carries a second, smaller picture (Pillow reads it as format MPO)."""
    return encoded(lesion(), "MPO", save_all=True, append_images=[lesion((100, 75))])


def sixteen_bit_png() -> bytes:
    levels = np.linspace(0, 65535, 200 * 150).astype(np.uint16).reshape(150, 200)  # a full 16-bit ramp
    data = encoded(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16"), "the file must really be 16-bit"
    return data


def palette_png_with_transparency() -> bytes:
    picture = lesion().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(picture, "PNG", transparency=0)


@dataclass(frozen=True)
class Upload:
    id: str
    make: Callable[[], bytes]
    name: str = "lesion.jpg"
    refused: str | None = None  # a fragment of the message; None: accepted
    api_refused: str | None = None  # where the API's words differ from the form's
    api_status: int = 400
    size: tuple[int, int] = (200, 150)  # accepted: the upright width and height on record
    stored_name: str | None = None  # accepted: the original name kept (default: the name sent)


NOT_AN_IMAGE = "whatever its name says, it is not one"
ANIMATED = "Animated images are not accepted; upload a single still photo"
ONLY = "only JPG and PNG images are accepted"

TABLE = [
    # Not images at all, named .jpg
    Upload("text named .jpg", lambda: b"Patient: Jane Doe\nnot an image\n", refused=NOT_AN_IMAGE),
    Upload("html named .jpg", lambda: b"<html><script>alert(1)</script></html>", refused=NOT_AN_IMAGE),
    Upload(
        "svg named .jpg",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="150"><circle r="40"/></svg>',
        refused=NOT_AN_IMAGE,
    ),
    Upload("pdf named .jpg", lambda: encoded(lesion(), "PDF"), refused=NOT_AN_IMAGE),
    # Broken, empty, too big, too many pixels, too few
    Upload(
        "truncated jpeg", lambda: (jpeg := encoded(lesion(), "JPEG"))[: len(jpeg) // 2], refused="damaged or cut short"
    ),
    Upload("zero bytes", lambda: b"", refused="empty"),
    Upload(
        "50 MB",
        fifty_megabytes,
        name="huge.png",
        refused="the limit is 10 MB",
        api_refused="too large",
        api_status=413,
    ),
    Upload("decompression bomb 30000x30000", lambda: png_declaring(30000, 30000), refused="more pixels than"),
    Upload("1x1", lambda: encoded(lesion((1, 1)), "PNG"), name="dot.png", refused="at least 64 pixels a side"),
    # Other formats, still and animated
    Upload("gif still", lambda: encoded(lesion(), "GIF"), name="lesion.gif", refused=f"GIF file; {ONLY}"),
    Upload("webp still", lambda: encoded(lesion(), "WEBP"), name="lesion.webp", refused=f"WEBP file; {ONLY}"),
    Upload("tiff", lambda: encoded(lesion(), "TIFF"), name="lesion.tif", refused=f"TIFF file; {ONLY}"),
    Upload("bmp", lambda: encoded(lesion(), "BMP"), name="lesion.bmp", refused=f"BMP file; {ONLY}"),
    Upload("animated gif", lambda: animated("GIF"), name="lesion.gif", refused=ANIMATED),
    Upload("animated webp", lambda: animated("WEBP"), name="lesion.webp", refused=ANIMATED),
    Upload("animated png (apng)", lambda: animated("PNG"), name="lesion.png", refused=ANIMATED),
    # Accepted: every colour mode, converted where it is used
    Upload("rgb jpeg", lambda: encoded(lesion(), "JPEG")),
    Upload("grayscale jpeg", lambda: encoded(lesion(mode="L"), "JPEG")),
    Upload("grayscale png", lambda: encoded(lesion(mode="L"), "PNG"), name="lesion.png"),
    Upload("cmyk jpeg", lambda: encoded(lesion(mode="CMYK"), "JPEG")),
    Upload("16-bit grayscale png", sixteen_bit_png, name="lesion.png"),
    Upload("rgba png", lambda: encoded(lesion(mode="RGBA"), "PNG"), name="lesion.png"),
    Upload("palette png with transparency", palette_png_with_transparency, name="lesion.png"),
    Upload("exif-rotated jpeg", exif_rotated_jpeg, size=(150, 200)),
    Upload("camera jpeg with preview (mpo)", camera_mpo),
    # Accepted: odd names
    Upload(
        "name with ../",
        lambda: encoded(lesion(), "JPEG"),
        name="../../../etc/cron.d/lesion.jpg",
        stored_name="lesion.jpg",
    ),
    Upload("unicode name", lambda: encoded(lesion(), "JPEG"), name="Jördis Ünal – Rücken 背中 🙂.jpg"),
    Upload("markup in the name", lambda: encoded(lesion(), "JPEG"), name="<img src=x onerror=alert(1)>.jpg"),
]
REFUSED = [u for u in TABLE if u.refused]
ACCEPTED = [u for u in TABLE if not u.refused]


# Sending through either door


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]], field: str) -> tuple[bytes, str]:
    """A multipart body built by hand, as a hostile client would: Django's test client keeps only a file
    name's last part, and the `../` must reach the server."""
    boundary = f"hostile{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    for name, content in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append((head + "Content-Type: image/jpeg\r\n\r\n").encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    messages: str  # what the person reads: the page's text, or the JSON body
    analysis_id: int | None


def send(door: str, user, case, files: list[tuple[str, bytes]]) -> Answer:
    if door == "form":
        from django.test import Client

        client = Client()
        client.force_login(user)
        body, content_type = multipart({}, files, "images")
        response = client.post(reverse("case-upload", args=[case.pk]), body, content_type=content_type)
        analysis_id = None
        if response.status_code == 302 and (m := re.search(r"/analyses/(\d+)/", response["Location"])):
            analysis_id = int(m.group(1))
        return Answer(response.status_code, html.unescape(response.content.decode()), analysis_id)
    body, content_type = multipart({"case": str(case.pk)}, files, "image")
    response = client_for(user).post("/api/images/", body, content_type=content_type)
    assert response["Content-Type"] == "application/json", response.content[:300]
    payload = response.json()
    analysis_id = payload["analysis"]["id"] if response.status_code == 201 else None
    return Answer(response.status_code, str(payload), analysis_id)


def media_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def case(staff):
    return CaseFactory(patient__clinic=staff.membership.clinic, clinician=staff)


# The table, through both doors


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("upload", REFUSED, ids=[u.id for u in REFUSED])
def test_a_hostile_file_is_refused_with_a_clear_message_and_nothing_is_stored(upload, door, staff, case):
    answer = send(door, staff, case, [(upload.name, upload.make())])

    expected_status = upload.api_status if door == "api" else 400
    message = (upload.api_refused or upload.refused) if door == "api" else upload.refused
    assert answer.status == expected_status
    assert message in answer.messages
    if door == "form" and upload.refused != "empty":
        assert upload.name.rsplit("/", 1)[-1] in answer.messages  # the message names the file
    assert not LesionImage.objects.exists()
    assert not Analysis.objects.exists()
    assert media_files() == []


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("upload", ACCEPTED, ids=[u.id for u in ACCEPTED])
def test_an_odd_but_usable_image_is_stored_as_sent_under_a_generated_name_and_queued(upload, door, staff, case):
    content = upload.make()

    answer = send(door, staff, case, [(upload.name, content)])

    assert answer.status == (302 if door == "form" else 201), answer.messages[-2000:]
    image = LesionImage.objects.get()
    analysis = Analysis.objects.get()
    assert (answer.analysis_id, analysis.image, analysis.status) == (analysis.pk, image, "queued")
    assert image.original_filename == (upload.stored_name or upload.name)
    assert re.fullmatch(r"lesions/[0-9a-f]{32}\.(jpg|png)", image.image.name)
    assert media_files() == [Path(settings.MEDIA_ROOT) / image.image.name]
    stored = Path(image.image.path).read_bytes()
    assert stored == content  # the original is what the record keeps
    with Image.open(io.BytesIO(stored)) as picture:
        picture.load()
    assert (image.width, image.height) == upload.size


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(num_threads=1)


@pytest.mark.parametrize("upload", ACCEPTED, ids=[u.id for u in ACCEPTED])
def test_the_worker_classifies_every_accepted_image_and_its_report_renders(upload, classifier, staff, case):
    answer = send("api", staff, case, [(upload.name, upload.make())])
    analysis = Analysis.objects.select_related("image").get(pk=answer.analysis_id)

    prediction = classifier.predict(analysis.image.image.path)

    assert sorted(prediction.probabilities) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert Analysis.claim(analysis.pk)
    analysis.finish(prediction.probabilities, prediction.model_version)
    assert reports.render_pdf(analysis).startswith(b"%PDF-")


def test_an_exif_rotated_photo_is_upright_for_the_model(staff, case):
    send("api", staff, case, [("portrait.jpg", exif_rotated_jpeg())])
    picture = load_image(LesionImage.objects.get().image.path)

    assert picture.size == (150, 200)
    red, blue = picture.getpixel((75, 30)), picture.getpixel((75, 170))
    assert red[0] > 200 and red[2] < 60, red  # the stored left half is on top once upright
    assert blue[2] > 200 and blue[0] < 60, blue


def test_a_markup_file_name_is_shown_escaped_on_the_case_page(client, staff, case):
    send("api", staff, case, [("<img src=x onerror=alert(1)>.jpg", encoded(lesion(), "JPEG"))])
    client.force_login(staff)

    page = client.get(reverse("case-detail", args=[case.pk])).content.decode()

    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page
    assert "<img src=x" not in page


# The same image twice


@pytest.mark.parametrize("door", DOORS)
def test_the_same_image_uploaded_again_to_a_case_is_refused_naming_the_earlier_upload(door, staff, case):
    content = encoded(lesion(), "JPEG")
    first = send(door, staff, case, [("first visit.jpg", content)])
    earlier = LesionImage.objects.get()

    again = send(door, staff, case, [("again.jpg", content)])

    assert again.status == 400
    assert f"already in this case: image {earlier.pk}" in again.messages
    assert f"as first visit.jpg (analysis {first.analysis_id})" in again.messages
    assert LesionImage.objects.count() == 1 and Analysis.objects.count() == 1
    assert media_files() == [Path(earlier.image.path)]


def test_the_same_image_chosen_twice_in_one_form_upload_is_refused_and_nothing_is_stored(staff, case):
    content = encoded(lesion(), "JPEG")
    other = encoded(lesion(mode="L"), "JPEG")

    answer = send("form", staff, case, [("a.jpg", content), ("b.jpg", other), ("c.jpg", content)])

    assert answer.status == 400
    assert "c.jpg: This is the same image as a.jpg in this upload" in answer.messages
    assert not LesionImage.objects.exists() and media_files() == []


@pytest.mark.parametrize("door", DOORS)
def test_the_same_image_in_another_case_of_the_same_patient_is_accepted(door, staff, case):
    content = encoded(lesion(), "JPEG")
    send(door, staff, case, [("a.jpg", content)])
    other_case = CaseFactory(patient=case.patient, clinician=staff)

    answer = send(door, staff, other_case, [("a.jpg", content)])

    assert answer.status in (201, 302)
    assert LesionImage.objects.filter(sha256=LesionImage.objects.first().sha256).count() == 2


def test_two_uploads_of_one_image_racing_past_validation_store_it_once(staff, case):
    # Both passed validate_image_file before either was saved; submit_image checks again under the case lock.
    content = encoded(lesion(), "JPEG")
    from django.core.files.base import ContentFile

    submit_image(case, ContentFile(content, name="a.jpg"), staff)
    with pytest.raises(UploadRejected, match="already in this case"):
        submit_image(case, ContentFile(content, name="b.jpg"), staff)
    assert LesionImage.objects.count() == 1


def test_a_truncated_jpeg_is_refused_even_after_weasyprint_has_been_imported(staff, case):
    # Importing WeasyPrint sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process, which would let a
    # cut-short file decode padded with gray.
    import weasyprint  # noqa: F401
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES
    jpeg = encoded(lesion(), "JPEG")

    answer = send("api", staff, case, [("cut.jpg", jpeg[: len(jpeg) // 2])])

    assert answer.status == 400
    assert "damaged or cut short" in answer.messages
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # left as it was found
