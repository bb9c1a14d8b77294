import io
import struct
import zlib

import factory
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from analysis.models import Analysis, Case, Clinic, LesionImage, Membership, Patient


class ClinicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Clinic

    name = factory.Sequence(lambda n: f"Clinic {n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    clinic = factory.SubFactory(ClinicFactory)


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    clinic = factory.SubFactory(ClinicFactory)
    mrn = factory.Sequence(lambda n: f"MRN{n:05d}")
    name = factory.Faker("name")


class CaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Case

    patient = factory.SubFactory(PatientFactory)
    body_site = Case.BodySite.BACK


class LesionImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LesionImage

    case = factory.SubFactory(CaseFactory)
    image = factory.django.ImageField(width=40, height=30, color="brown", filename="lesion.jpg")
    original_filename = "lesion.jpg"
    sha256 = "0" * 64
    uploaded_by = factory.SubFactory(UserFactory)


# A melanoma result: malignant, and urgent at any triage threshold.
PROBABILITIES = {"akiec": 0.02, "bcc": 0.03, "bkl": 0.05, "df": 0.01, "mel": 0.81, "nv": 0.07, "vasc": 0.01}


class AnalysisFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Analysis

    image = factory.SubFactory(LesionImageFactory)


def finish(
    analysis: Analysis, probabilities=PROBABILITIES, version: str = "test-model-1", *, report: bool = False, **result
) -> Analysis:
    """Take a queued analysis through the worker's own transitions to done, without running a model; `result`
    goes to Analysis.finish (quality flags, heatmap), and `report=True` adds a stand-in PDF file."""
    assert Analysis.claim(analysis.pk)
    analysis.refresh_from_db()
    analysis.finish(probabilities, version, **result)
    if report:
        analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 a report"))
    return analysis


def jpeg_upload(name: str, size: tuple[int, int] = (64, 48)) -> SimpleUploadedFile:
    """An uploaded JPEG made on the spot, as a browser would send it."""
    buffer = io.BytesIO()
    Image.new("RGB", size, "sienna").save(buffer, "JPEG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/jpeg")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """The picture saved in a format, as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
