"""Patient images and reports are private by default: no URL serves the media folder, the static folders never
hold it, and the views that stream a file check the clinic and tell every cache to keep nothing."""

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.views import static
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import LesionImage
from tests.factories import CaseFactory, finish, jpeg_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def uploaded(client, staff, patient) -> LesionImage:
    """An image uploaded through the page, as staff do, and its analysis done with a report."""
    case = CaseFactory(patient=patient, clinician=staff)
    client.force_login(staff)
    client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("lesion.jpg", (200, 150))})
    image = LesionImage.objects.get()
    finish(image.analyses.get(), report=True)
    return image


def callbacks(patterns=None):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from callbacks(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            yield pattern.callback


def test_no_url_pattern_serves_files_from_disk():
    assert static.serve not in set(callbacks())


def test_the_media_folder_is_outside_every_static_folder():
    media = settings.MEDIA_ROOT.resolve()
    for folder in [settings.STATIC_ROOT, *settings.STATICFILES_DIRS]:
        folder = folder.resolve()
        assert not media.is_relative_to(folder) and not folder.is_relative_to(media)


def test_an_uploaded_image_is_reached_only_through_the_clinic_checked_view(client, uploaded):
    name = uploaded.image.name  # lesions/<random>.jpg
    assert (settings.MEDIA_ROOT / name).is_file()

    for guess in [
        f"/private-media/{name}",
        f"/media/{name}",
        f"/static/{name}",
        f"/static/../media/{name}",
        f"/static/%2e%2e/media/{name}",
        f"/{name}",
    ]:
        assert client.get(guess).status_code == 404, guess
    assert client.get(reverse("image-file", args=[uploaded.pk])).status_code == 200


def test_images_and_reports_tell_caches_to_keep_nothing_and_browsers_not_to_sniff(client, staff, uploaded):
    analysis = uploaded.analyses.get()
    token = Token.objects.create(user=staff)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    responses = {
        "image": client.get(reverse("image-file", args=[uploaded.pk])),
        "report": client.get(reverse("analysis-report", args=[analysis.pk])),
        "API report": api.get(f"/api/analyses/{analysis.pk}/report/"),
    }

    for what, response in responses.items():
        assert response.status_code == 200, what
        assert response["Cache-Control"] == "private, no-store", what
        assert response["X-Content-Type-Options"] == "nosniff", what
    assert responses["image"]["Content-Type"] == "image/jpeg"
    assert responses["report"]["Content-Type"] == responses["API report"]["Content-Type"] == "application/pdf"


def test_every_page_is_unframeable_and_unsniffable(client, staff):
    client.force_login(staff)
    response = client.get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
