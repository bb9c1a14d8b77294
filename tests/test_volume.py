"""The pages stay quick at volume: the number of queries on a page does not grow with the rows behind it."""

import time
from unittest import mock

import pytest
from django.core.management import call_command
from django.urls import reverse

from analysis.demo import seed_clinic
from analysis.models import Analysis, Case, LesionImage, Patient
from ml.serve import tiers
from workers import tasks

pytestmark = pytest.mark.django_db

# A page costs the session, the user and their clinic (3 queries), then its own few.
MAX_QUERIES = 10


@pytest.mark.volume
def test_list_pages_need_a_bounded_number_of_queries_with_10000_patients_and_50000_analyses(
    client, staff, outsider, django_assert_max_num_queries
):
    started = time.perf_counter()
    seeded = seed_clinic(staff.membership.clinic, staff, patients=10_000, analyses=50_000)
    seconds = time.perf_counter() - started
    assert (seeded.patients, seeded.analyses) == (10_000, 50_000)
    assert Analysis.objects.count() == 50_000 and Patient.objects.count() == 10_000
    print(f"seeded 10,000 patients and 50,000 analyses in {seconds:.1f} s")

    client.force_login(staff)
    patient = Patient.objects.order_by("pk").last()
    busiest = Case.objects.order_by("-pk").first()
    analysis = Analysis.objects.filter(status="done").order_by("-pk").first()
    pages = [
        ("/", {}),
        (reverse("patient-list"), {}),
        (reverse("patient-list"), {"page": 400}),
        (reverse("patient-list"), {"q": "huber"}),
        (reverse("analysis-list"), {}),
        (reverse("analysis-list"), {"page": 2000}),
        (reverse("analysis-list"), {"malignant": "on", "predicted_class": "mel", "date_from": "2020-01-01"}),
        (reverse("analysis-list"), {"status": "failed", "patient": patient.mrn}),
        (reverse("patient-detail", args=[patient.pk]), {}),
        (reverse("case-detail", args=[busiest.pk]), {}),
        (reverse("analysis-detail", args=[analysis.pk]), {}),
    ]
    with mock.patch.object(tasks.render_report, "delay"):  # seeded results have no report; none is written here
        for url, params in pages:
            with django_assert_max_num_queries(MAX_QUERIES):
                response = client.get(url, params)
            assert response.status_code == 200, (url, params)

    listed = client.get(reverse("analysis-list")).context["page"]
    assert listed.paginator.count == 50_000 and len(listed) == 25

    client.force_login(outsider)
    assert client.get(reverse("patient-list")).context["page"].paginator.count == 0
    assert client.get(reverse("analysis-list")).context["page"].paginator.count == 0


def test_seed_demo_fills_a_clinic_without_running_the_model(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        call_command("seed_demo", "--patients", "30", "--analyses", "90")
    assert Patient.objects.count() == 30 and Analysis.objects.count() == 90
    assert callbacks == []  # nothing was sent to the workers
    assert set(Analysis.objects.values_list("status", flat=True)) <= {"done", "failed"}
    for analysis in Analysis.objects.filter(status="done"):
        assert sum(analysis.probabilities.values()) == pytest.approx(1.0)
        assert analysis.predicted_class == max(analysis.probabilities, key=analysis.probabilities.get)
        # "Malignant" means what it means everywhere: the malignant classes together reach the urgent threshold.
        assert analysis.malignant == (analysis.malignant_probability >= tiers.load_triage().urgent_threshold)
        if not analysis.flagged:
            assert analysis.malignant == (analysis.risk_tier == "urgent")
    image = LesionImage.objects.first()
    assert image.image.storage.exists(image.image.name)
    assert Case.objects.filter(images__isnull=True).count() == 0
    call_command("seed_demo", "--patients", "5")  # a second run adds to the same clinic
    assert Patient.objects.count() == 35
