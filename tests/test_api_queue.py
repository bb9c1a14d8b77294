"""The API end to end through a real `celery worker` process and the shipped model: upload, poll, fetch the PDF."""

import io
import time

import pytest
from pypdf import PdfReader

from analysis.models import Analysis
from tests.factories import CaseFactory
from tests.test_api import client_for
from tests.test_queue import Worker, lesion_jpeg, shipped_version, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]


def test_an_image_uploaded_through_the_api_is_analysed_and_its_report_downloaded(broker, staff, tmp_path):
    api = client_for(staff)
    case = CaseFactory(patient__clinic=staff.membership.clinic, clinician=staff)
    with Worker(broker, tmp_path / "worker.log") as worker:
        upload = lesion_jpeg(3)
        created = api.post("/api/images/", {"case": case.pk, "image": upload}, format="multipart")
        assert created.status_code == 201, created.json()
        analysis = created.json()["analysis"]
        assert analysis["status"] == "queued"

        def finished():
            body = api.get(f"/api/analyses/{analysis['id']}/").json()
            return body if body["status"] == "failed" or body["report"] else None

        started = time.monotonic()
        result = wait_for(finished, 90, "the analysis and its report", worker)
        elapsed = time.monotonic() - started

    assert result["status"] == "done", result["error"]
    assert sorted(result["probabilities"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result["predicted_class"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["confidence"] == pytest.approx(result["probabilities"][result["predicted_class"]])
    assert result["malignant"] == (result["predicted_class"] in {"mel", "bcc", "akiec"})
    assert result["model_version"] == shipped_version()
    assert Analysis.objects.get(pk=analysis["id"]).status == "done"

    report = api.get(f"/api/analyses/{analysis['id']}/report/")
    assert report.status_code == 200
    assert report["Content-Type"] == "application/pdf"
    pdf = b"".join(report.streaming_content)
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert case.patient.mrn in text
    assert elapsed < 90
