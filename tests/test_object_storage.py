"""With S3_BUCKET set, every file lives in a private bucket of an S3-compatible store, and everything that reads or
writes one (upload, the worker, heatmap, report, the file views, the duplicate check, the admin, `analyze`,
`seed_demo`) works as it does on the local folder.

The store is moto's S3 server (`moto.server.ThreadedMotoServer`, a real HTTP endpoint on loopback that boto3 talks
to as to AWS or MinIO), started once for the module; each test gets a bucket of its own.
"""

import hashlib
import io
import logging
import uuid
from unittest import mock

import boto3
import httpx
import pytest
from botocore.config import Config
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.urls import reverse

from analysis.models import Analysis, LesionImage
from skinsite.settings import s3_storage
from tests import stack
from tests.factories import jpeg_upload
from tests.test_api import client_for
from tests.test_settings import manage
from workers import tasks

pytestmark = pytest.mark.django_db

CREDENTIALS = {"S3_ACCESS_KEY_ID": "skinsite-test", "S3_SECRET_ACCESS_KEY": "skinsite-test-secret"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line for every request otherwise
    port = stack.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


class Bucket:
    """What is in the bucket, read with boto3 directly (never through the code under test)."""

    def __init__(self, endpoint: str, name: str):
        self.endpoint, self.name = endpoint, name
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["S3_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["S3_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )
        self.client.create_bucket(Bucket=name)

    def names(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


@pytest.fixture
def bucket(s3_endpoint, settings, monkeypatch) -> Bucket:
    """A fresh private bucket, and this process's default storage pointed at it as S3_BUCKET and friends would."""
    found = Bucket(s3_endpoint, f"skinsite-{uuid.uuid4().hex[:12]}")
    env = {"S3_ENDPOINT_URL": s3_endpoint, "S3_REGION": "us-east-1", **CREDENTIALS}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage(found.name)}
    return found


@pytest.fixture
def no_local_media(settings):
    """The local media folder, which must stay empty while the bucket is the store."""
    yield settings.MEDIA_ROOT
    assert not settings.MEDIA_ROOT.exists() or not any(settings.MEDIA_ROOT.rglob("*"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_default_storage_is_the_bucket(bucket):
    assert default_storage.bucket_name == bucket.name
    assert type(default_storage._wrapped).__name__ == "PrivateS3Storage"


def test_an_upload_through_the_page_lands_in_the_bucket_and_nowhere_else(client, staff, case, bucket, no_local_media):
    upload = jpeg_upload("lesion.jpg", (200, 150))
    sent = upload.read()
    upload.seek(0)
    client.force_login(staff)

    client.post(reverse("case-upload", args=[case.pk]), {"images": upload})

    image = LesionImage.objects.get()
    assert bucket.names() == [image.image.name]
    assert image.image.name.startswith("lesions/")
    stored = bucket.body(image.image.name)
    assert stored == sent and sha256(stored) == image.sha256
    assert (image.width, image.height) == (200, 150)
    assert image.analyses.get().status == "queued"


def test_the_same_image_twice_through_the_api_is_refused_and_stored_once(staff, case, bucket, no_local_media):
    api = client_for(staff)
    first = api.post("/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (120, 90))}, format="multipart")
    again = api.post("/api/images/", {"case": case.pk, "image": jpeg_upload("b.jpg", (120, 90))}, format="multipart")

    assert first.status_code == 201
    assert again.status_code == 400 and "already in this case" in again.json()["image"][0]
    assert len(bucket.names("lesions/")) == 1 == LesionImage.objects.count()


def test_a_failed_upload_leaves_no_file_in_the_bucket(staff, case, bucket):
    from analysis.services import submit_image

    with mock.patch.object(Analysis.objects, "create", side_effect=RuntimeError("boom")), pytest.raises(RuntimeError):
        submit_image(case, jpeg_upload("a.jpg", (120, 90)), staff)

    assert bucket.names() == [] and not LesionImage.objects.exists()


@pytest.fixture
def analysed(staff, case, bucket, explainer) -> Analysis:
    """An image uploaded through the API and analysed by the worker's task, its report rendered, all in-process."""
    from analysis import reports

    response = client_for(staff).post(
        "/api/images/", {"case": case.pk, "image": jpeg_upload("lesion.jpg", (224, 168))}, format="multipart"
    )
    analysis_id = response.json()["analysis"]["id"]
    with mock.patch.object(tasks.render_report, "delay"):
        assert tasks.analyse.run(analysis_id) == "done"
    analysis = Analysis.objects.select_related("image__case__patient__clinic").get(pk=analysis_id)
    assert reports.store_report(analysis)
    analysis.refresh_from_db()
    return analysis


def test_the_worker_reads_the_image_from_the_bucket_and_writes_heatmap_and_report_there(
    analysed, bucket, no_local_media
):
    assert analysed.status == "done" and analysed.has_heatmap and analysed.has_report
    keys = bucket.names()
    assert keys == sorted([analysed.image.image.name, analysed.heatmap.name, analysed.report.name])
    assert analysed.heatmap.name.startswith("heatmaps/") and analysed.report.name.startswith("reports/")
    assert bucket.body(analysed.heatmap.name)[:8] == b"\x89PNG\r\n\x1a\n"
    assert bucket.body(analysed.report.name)[:5] == b"%PDF-"


def test_the_clinic_checking_views_stream_each_file_from_the_bucket(client, staff, analysed, bucket):
    client.force_login(staff)
    image = client.get(reverse("image-file", args=[analysed.image_id]))
    heatmap = client.get(reverse("analysis-heatmap", args=[analysed.pk]))
    report = client_for(staff).get(f"/api/analyses/{analysed.pk}/report.pdf")

    assert b"".join(image.streaming_content) == bucket.body(analysed.image.image.name)
    assert b"".join(heatmap.streaming_content) == bucket.body(analysed.heatmap.name)
    assert b"".join(report.streaming_content) == bucket.body(analysed.report.name)
    assert report["Content-Type"] == "application/pdf" and report["Cache-Control"] == "private, no-store"


def test_an_outsider_gets_404_for_another_clinics_files_in_the_bucket(client, outsider, analysed):
    client.force_login(outsider)

    assert client.get(reverse("image-file", args=[analysed.image_id])).status_code == 404
    assert client.get(reverse("analysis-heatmap", args=[analysed.pk])).status_code == 404
    assert client_for(outsider).get(f"/api/analyses/{analysed.pk}/report.pdf").status_code == 404


def test_no_page_or_answer_points_at_the_bucket_and_the_bucket_refuses_anonymous_reads(
    client, staff, analysed, bucket, s3_endpoint
):
    client.force_login(staff)
    answers = [
        client.get(reverse("analysis-detail", args=[analysed.pk])).content,
        client.get(reverse("case-detail", args=[analysed.image.case_id])).content,
        client_for(staff).get(f"/api/analyses/{analysed.pk}/").content,
        client_for(staff).get(f"/api/images/{analysed.image_id}/").content,
    ]
    for answer in answers:
        assert s3_endpoint.encode() not in answer and bucket.name.encode() not in answer
        assert b"X-Amz-" not in answer
    for key in bucket.names():
        grants = bucket.client.get_object_acl(Bucket=bucket.name, Key=key)["Grants"]
        assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]  # the owner's only: nothing public
        assert httpx.get(f"{s3_endpoint}/{bucket.name}/{key}").status_code == 403


def test_no_stored_file_has_a_url_into_the_bucket_the_admin_included(client, analysed, bucket, django_user_model):
    # The admin links a stored file by its url(): it must lead nowhere, as the local folder's does.
    name = analysed.image.image.name
    assert default_storage.url(name) == f"/private-media/{name}"
    platform_admin = django_user_model.objects.create_superuser("platform", password="x")
    client.force_login(platform_admin)

    pages = [
        client.get(reverse("admin:analysis_lesionimage_change", args=[analysed.image_id])),
        client.get(reverse("admin:analysis_analysis_change", args=[analysed.pk])),
    ]

    for page in pages:
        assert page.status_code == 200
        assert bucket.endpoint.encode() not in page.content and b"X-Amz-" not in page.content
        assert b"/private-media/" in page.content  # the link is there, to nowhere
    assert client.get(default_storage.url(name)).status_code == 404


def test_a_report_missing_from_the_bucket_is_a_404_that_asks_the_workers_for_it(staff, analysed, bucket):
    bucket.client.delete_object(Bucket=bucket.name, Key=analysed.report.name)

    with mock.patch.object(tasks, "_send", return_value=True) as send:
        response = client_for(staff).get(f"/api/analyses/{analysed.pk}/report.pdf")

    assert response.status_code == 404
    send.assert_called_once_with(tasks.render_report, analysed.pk)


@pytest.fixture
def store_out_of_reach(bucket, settings):
    """The bucket's settings, but nothing listens at the endpoint: connections are refused, as when the store's
    host is away."""
    with mock.patch.dict("os.environ", {"S3_ENDPOINT_URL": f"http://127.0.0.1:{stack.free_port()}"}):
        settings.STORAGES = {**settings.STORAGES, "default": s3_storage(bucket.name)}


def test_a_store_out_of_reach_makes_the_worker_retry_rather_than_fail_the_image(staff, case, bucket, settings):
    from celery.exceptions import Retry

    response = client_for(staff).post(
        "/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (120, 90))}, format="multipart"
    )
    analysis_id = response.json()["analysis"]["id"]
    # Now the store goes away.
    with mock.patch.dict("os.environ", {"S3_ENDPOINT_URL": f"http://127.0.0.1:{stack.free_port()}"}):
        settings.STORAGES = {**settings.STORAGES, "default": s3_storage(bucket.name)}

    with mock.patch.object(tasks.analyse, "retry", side_effect=Retry) as retry, pytest.raises(Retry):
        tasks.analyse.run(analysis_id)

    assert retry.called
    assert Analysis.objects.get(pk=analysis_id).status == "queued"  # put back for the retry, not failed


def test_an_api_upload_while_the_store_is_out_of_reach_is_a_503_to_retry_and_saves_nothing(
    staff, case, store_out_of_reach
):
    response = client_for(staff).post(
        "/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (120, 90))}, format="multipart"
    )

    assert response.status_code == 503 and response["Retry-After"]
    assert "file store cannot be reached" in response.json()["detail"]
    assert not LesionImage.objects.exists() and not Analysis.objects.exists()


def test_a_page_upload_while_the_store_is_out_of_reach_is_a_503_to_retry(client, staff, case, store_out_of_reach):
    client.force_login(staff)

    response = client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("a.jpg", (120, 90))})

    assert response.status_code == 503 and b"file store cannot be reached" in response.content
    assert not LesionImage.objects.exists()


def test_the_analyze_command_stores_its_images_in_the_bucket(case, bucket, tmp_path, no_local_media):
    path = tmp_path / "from-disk.jpg"
    path.write_bytes(jpeg_upload("x.jpg", (150, 100)).read())

    call_command("analyze", str(path), case=case.pk, stdout=io.StringIO())

    image = LesionImage.objects.get()
    assert bucket.names() == [image.image.name]
    assert bucket.body(image.image.name) == path.read_bytes()


def test_the_admin_stores_an_added_image_in_the_bucket(client, case, bucket, django_user_model):
    admin = django_user_model.objects.create_superuser("platform", password="x")
    client.force_login(admin)

    response = client.post(
        reverse("admin:analysis_lesionimage_add"), {"case": case.pk, "image": jpeg_upload("admin.jpg", (100, 80))}
    )

    assert response.status_code == 302, response.content[:2000]
    image = LesionImage.objects.get()
    assert bucket.names() == [image.image.name]


def test_seed_demo_puts_its_pictures_in_the_bucket_once(bucket, no_local_media):
    call_command("seed_demo", "--patients", "3", stdout=io.StringIO())
    first = bucket.names()
    call_command("seed_demo", "--patients", "3", "--clinic", "Second", stdout=io.StringIO())

    assert first and bucket.names() == first
    for image in LesionImage.objects.all():
        assert image.image.name in first
        with image.image.open("rb") as handle:
            assert handle.read(2) == b"\xff\xd8"


# Configuration


@pytest.mark.parametrize(
    "env, message",
    [
        ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
        ({"S3_ACCESS_KEY_ID": "only-the-key"}, "S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"),
    ],
)
def test_a_bad_object_store_setting_stops_start_up_and_names_it(env, message):
    result = manage("check", S3_BUCKET="skinsite", **env)

    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line and message in last_line


def test_without_s3_bucket_the_files_stay_in_the_local_folder(settings):
    assert settings.STORAGES["default"]["BACKEND"] == "django.core.files.storage.FileSystemStorage"


# Moving a one-machine install's media folder into the bucket


@pytest.fixture
def media_folder(tmp_path, case, staff, bucket) -> dict[str, bytes]:
    """A local media folder as a one-machine install leaves it, its files on record in the database."""
    from tests.factories import AnalysisFactory

    files = {
        "lesions/a1.jpg": jpeg_upload("a.jpg", (100, 80)).read(),
        "heatmaps/h1.png": b"\x89PNG\r\n\x1a\n a heatmap",
        "reports/r1.pdf": b"%PDF-1.4 a report",
        "demo/lesion-0.jpg": jpeg_upload("d.jpg", (90, 70)).read(),
    }
    for name, data in files.items():
        (tmp_path / "old-media" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "old-media" / name).write_bytes(data)
    # Rows as they are on disk: the names only (saving through a factory would store new files).
    analysis = AnalysisFactory(image__case=case, image__uploaded_by=staff)
    LesionImage.objects.filter(pk=analysis.image_id).update(image="lesions/a1.jpg")
    Analysis.objects.filter(pk=analysis.pk).update(heatmap="heatmaps/h1.png", report="reports/r1.pdf")
    default_storage.delete(analysis.image.image.name)  # the factory's own file, in the bucket already
    return files


def move(source) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("media_to_bucket", "--source", str(source), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_media_to_bucket_copies_every_file_under_its_name_and_verifies_it(bucket, media_folder, tmp_path):
    out, _ = move(tmp_path / "old-media")

    assert bucket.names() == sorted(media_folder)
    for name, data in media_folder.items():
        assert bucket.body(name) == data
    assert "4 copied, 0 already in the bucket, 0 different, 0 named by the database but not in the bucket" in out
    assert "OK: every file" in out
    analysis = Analysis.objects.get()
    assert analysis.has_report and analysis.has_heatmap  # the rows' names now find their files


def test_media_to_bucket_run_again_copies_nothing_and_says_ok(bucket, media_folder, tmp_path):
    move(tmp_path / "old-media")
    out, _ = move(tmp_path / "old-media")

    assert "0 copied, 4 already in the bucket, 0 different" in out and "OK: every file" in out
    assert bucket.names() == sorted(media_folder)


def test_media_to_bucket_never_overwrites_other_bytes_under_a_name_and_fails(bucket, media_folder, tmp_path):
    bucket.client.put_object(Bucket=bucket.name, Key="reports/r1.pdf", Body=b"%PDF-1.4 another report")

    with pytest.raises(CommandError, match="not every file is in the bucket"):
        move(tmp_path / "old-media")

    assert bucket.body("reports/r1.pdf") == b"%PDF-1.4 another report"
    assert set(bucket.names()) == set(media_folder)  # the others were copied


def test_media_to_bucket_fails_when_a_file_on_record_is_in_neither_place(bucket, media_folder, tmp_path):
    (tmp_path / "old-media" / "heatmaps" / "h1.png").unlink()

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("media_to_bucket", "--source", str(tmp_path / "old-media"), stdout=out, stderr=err)

    assert "1 named by the database but not in the bucket" in out.getvalue()
    assert "heatmaps/h1.png: named by the database" in err.getvalue()


def test_media_to_bucket_refuses_to_run_without_a_bucket(tmp_path):
    with pytest.raises(CommandError, match="set S3_BUCKET"):
        move(tmp_path)
