"""One coherent verdict per result: the triage tier is the headline everywhere (page, timeline, list, dashboard,
PDF, API) and the most likely class its detail; "malignant" means one thing; times say their zone; the past
analyses filters keep what they can and say what they cannot."""

import re
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from analysis import reports
from analysis.models import Analysis, Membership
from ml.serve import tiers
from tests.factories import (
    AnalysisFactory,
    CaseFactory,
    LesionImageFactory,
    MembershipFactory,
    PatientFactory,
    encoded,
    finish,
    jpeg_upload,
)
from tests.test_api import client_for
from tests.test_reports import body_text
from workers import tasks

pytestmark = pytest.mark.django_db

# A melanoma-like result whose single most likely class is a naevus: 34% malignant, above the urgent threshold.
URGENT_BENIGN = {"akiec": 0.02, "bcc": 0.02, "bkl": 0.03, "df": 0.01, "mel": 0.30, "nv": 0.60, "vasc": 0.02}
ROUTINE = {"akiec": 0.01, "bcc": 0.01, "bkl": 0.05, "df": 0.01, "mel": 0.02, "nv": 0.89, "vasc": 0.01}
FLAGS = ["The image looks like a document or a screen capture, not a lesion."]


@pytest.fixture
def page(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def analysed(patient, probabilities, **result) -> Analysis:
    image = LesionImageFactory(case=CaseFactory(patient=patient, body_site="face"))
    return finish(AnalysisFactory(image=image), probabilities, report=True, **result)


@pytest.fixture
def urgent_benign(patient) -> Analysis:
    assert tiers.malignant_probability(URGENT_BENIGN) >= tiers.load_triage().urgent_threshold
    return analysed(patient, URGENT_BENIGN)


def test_malignant_means_the_urgent_threshold_is_reached_whatever_the_top_class(urgent_benign, patient):
    assert (urgent_benign.predicted_class, urgent_benign.risk_tier, urgent_benign.malignant) == ("nv", "urgent", True)
    routine = analysed(patient, ROUTINE)
    assert (routine.risk_tier, routine.malignant) == ("routine", False)
    # A melanoma as the top class whose malignant classes stay below the urgent threshold is not "malignant".
    weak = {"akiec": 0.0, "bcc": 0.0, "bkl": 0.19, "df": 0.19, "mel": 0.24, "nv": 0.19, "vasc": 0.19}
    weak_melanoma = analysed(patient, weak)
    assert weak_melanoma.predicted_class == "mel"
    assert tiers.load_triage().urgent_threshold > 0.24
    assert weak_melanoma.malignant is False


def test_the_analysis_page_heads_with_the_tier_and_says_why_it_is_urgent(page, urgent_benign):
    html = page.get(reverse("analysis-detail", args=[urgent_benign.pk])).content.decode()
    assert html.index('id="triage"') < html.index('id="class-line"')
    assert re.search(r'class="badge tier-urgent">Urgent</span>', html)
    reason = re.search(r'id="tier-reason">(.*?)</p>', html).group(1)
    assert "Urgent because melanoma, basal cell carcinoma and actinic keratosis together reach 34.0%" in reason
    assert "although the single most likely class (Melanocytic nevus, 60.0%) is benign" in reason
    assert "Benign</span>" not in html and "badge benign" not in html  # no second answer beside the tier


def test_a_flagged_image_does_not_head_with_its_class(page, patient):
    flagged = analysed(patient, URGENT_BENIGN, quality_flags=FLAGS)
    assert flagged.risk_tier == "uncertain"
    html = page.get(reverse("analysis-detail", args=[flagged.pk])).content.decode()
    assert html.index('id="triage"') < html.index('id="quality-flags"') < html.index('id="class-line"')
    assert 'class="class-line unreliable"' in html
    assert "(not to be relied on: the image was flagged)" in html
    assert "Uncertain because the quality check flagged the image" in html


def test_the_malignant_filter_never_hides_an_urgent_result(page, staff, urgent_benign, patient):
    routine = analysed(patient, ROUTINE)
    html = page.get(reverse("analysis-list"), {"malignant": "on"}).content.decode()
    assert f">#{urgent_benign.pk}<" in html and f">#{routine.pk}<" not in html
    ids = [row["id"] for row in client_for(staff).get("/api/analyses/", {"malignant": "true"}).json()["results"]]
    assert ids == [urgent_benign.pk]
    urgent = Analysis.objects.filter(risk_tier="urgent")
    assert set(urgent.values_list("pk", flat=True)) <= set(
        Analysis.objects.filter(malignant=True).values_list("pk", flat=True)
    )


def test_lists_and_timeline_show_the_tier_first_and_the_class_as_detail(page, patient, urgent_benign):
    for url in [reverse("analysis-list"), reverse("home"), reverse("patient-detail", args=[patient.pk])]:
        html = page.get(url).content.decode()
        assert 'class="badge tier-urgent">Urgent</span>' in html, url
        assert "Melanocytic nevus 60.0%" in html, url
        assert "badge benign" not in html and "badge malignant" not in html, url
    row = page.get(reverse("analysis-list")).content.decode()
    # Phones show each cell with its column's name (the header row is hidden there)
    for label in ["Analysis", "Patient", "Body site", "Status", "Triage", "Most likely class", "Submitted"]:
        assert f'data-label="{label}"' in row, label


def test_the_timeline_says_why_an_urgent_result_with_a_benign_class_is_urgent(page, patient, urgent_benign):
    html = page.get(reverse("patient-detail", args=[patient.pk])).content.decode()
    card = html[html.index('class="badge tier-urgent"') :]
    card = card[: card.index("</figure>")]
    assert "Melanocytic nevus 60.0%" in card
    reason = re.search(r'<small class="reason">(.*?)</small>', card).group(1)
    assert reason.startswith("Urgent because melanoma, basal cell carcinoma and actinic keratosis together reach 34.0%")
    assert reason.endswith("although the single most likely class (Melanocytic nevus, 60.0%) is benign.")


def test_the_heatmap_caption_of_an_urgent_result_with_a_benign_class_says_why_it_is_urgent(page, patient):
    analysis = analysed(patient, URGENT_BENIGN, heatmap_png=encoded(Image.new("RGB", (40, 30), "red"), "PNG"))
    html = page.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    caption = re.search(r'id="heatmap">.*?<figcaption>(.*?)</figcaption>', html, re.S).group(1)
    assert "weighed most for melanocytic nevus, the single most likely class." in caption
    assert "Urgent because melanoma, basal cell carcinoma and actinic keratosis together reach 34.0%" in caption


def test_a_result_whose_class_agrees_with_its_tier_needs_no_reason_on_the_timeline(page, patient):
    analysed(patient, ROUTINE)
    html = page.get(reverse("patient-detail", args=[patient.pk])).content.decode()
    assert 'class="badge tier-routine"' in html and 'class="reason"' not in html


def test_the_api_gives_the_tier_reason_and_the_one_meaning_of_malignant(staff, urgent_benign):
    body = client_for(staff).get(f"/api/analyses/{urgent_benign.pk}/").json()
    assert (body["risk_tier"], body["malignant"], body["predicted_class"]) == ("urgent", True, "nv")
    assert body["tier_reason"].startswith("Urgent because melanoma, basal cell carcinoma and actinic keratosis")


def test_the_report_heads_with_the_tier_and_gives_time_taken_and_the_clinicians_name(patient, staff):
    staff.first_name, staff.last_name = "Nina", "Berger"
    staff.save()
    case = CaseFactory(patient=patient, body_site="face", clinician=staff)
    image = LesionImageFactory(case=case, captured_at=datetime(2026, 3, 14, 9, 26, tzinfo=UTC))
    analysis = finish(AnalysisFactory(image=image), URGENT_BENIGN)
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=analysis.pk)))
    assert text.index("Triage: URGENT") < text.index("Urgent because") < text.index("Most likely class: Melanocytic")
    assert "a benign class" in text
    assert "taken 14 March 2026, 09:26 (UTC)" in text
    assert "Clinician Nina Berger" in text


def test_the_report_says_a_clinician_has_no_name_on_record(patient):
    nameless = get_user_model().objects.create_user("nina")
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient, clinician=nameless))))
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=analysis.pk)))
    assert "Clinician name not recorded (account nina)" in text
    assert "time taken not recorded (uploaded" in text


def test_pages_say_the_time_zone_of_their_times(page, staff, urgent_benign):
    clinic = staff.membership.clinic
    clinic.time_zone = "Europe/Vienna"
    clinic.save()
    html = page.get(reverse("analysis-detail", args=[urgent_benign.pk])).content.decode()
    finished = timezone.localtime(urgent_benign.finished_at, timezone.get_fixed_timezone(0))
    assert "Times are shown in Europe/Vienna" in html
    assert re.search(r"<dt>Finished</dt><dd>\d+ \w+ \d{4} \d\d:\d\d (CET|CEST)</dd>", html), finished


def test_the_timeline_says_when_it_shows_the_upload_time(page, patient):
    taken = LesionImageFactory(case=CaseFactory(patient=patient), captured_at=datetime(2026, 1, 5, 8, 0, tzinfo=UTC))
    LesionImageFactory(case=taken.case)
    html = page.get(reverse("patient-detail", args=[patient.pk])).content.decode()
    assert "Taken 5 Jan 2026 08:00 UTC" in html
    assert "(time taken not recorded)" in html


def test_a_capture_time_in_the_future_is_refused(page, patient):
    case = CaseFactory(patient=patient)
    with mock.patch.object(tasks.analyse, "apply_async"):
        response = page.post(
            reverse("case-upload", args=[case.pk]),
            {"images": jpeg_upload("lesion.jpg"), "captured_at": "2031-05-01T10:00"},
        )
    assert response.status_code == 400
    assert "The time taken cannot be in the future." in response.content.decode()
    assert not case.images.exists()


def test_a_bad_date_keeps_the_other_filters_and_says_so(page, patient, urgent_benign):
    routine = analysed(patient, ROUTINE)
    html = page.get(reverse("analysis-list"), {"date_from": "2026-13-45", "risk_tier": "urgent"}).content.decode()
    assert f">#{urgent_benign.pk}<" in html and f">#{routine.pk}<" not in html  # the tier filter still applies
    assert "Enter a valid date." in html


def test_to_before_from_says_so(page, urgent_benign):
    html = page.get(reverse("analysis-list"), {"date_from": "2026-05-10", "date_to": "2026-05-01"}).content.decode()
    assert "“To” is before “From”" in html


FIRST_DAY, LAST_DAY = "0001-01-01", "9999-12-31"


@pytest.mark.parametrize("time_zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_first_and_last_dates_a_date_picker_offers_give_a_page_as_an_open_range(
    page, staff, urgent_benign, time_zone
):
    clinic = staff.membership.clinic
    clinic.time_zone = time_zone
    clinic.save()
    boss = Client()
    boss.force_login(MembershipFactory(clinic=clinic, role=Membership.Role.CLINIC_ADMIN).user)
    page.get(reverse("patient-detail", args=[urgent_benign.image.case.patient_id]))  # one event in the trail
    # (from, to): whether today lies between them
    ranges = {(FIRST_DAY, LAST_DAY): True, (FIRST_DAY, FIRST_DAY): False, (LAST_DAY, LAST_DAY): False}
    for (first, last), today_inside in ranges.items():
        query = {"date_from": first, "date_to": last}
        analyses = page.get(reverse("analysis-list"), query)
        trail = boss.get(reverse("audit-log"), query)

        assert analyses.status_code == trail.status_code == 200, query
        assert [a.pk for a in analyses.context["page"].object_list] == [urgent_benign.pk] * today_inside, query
        viewed = [e.object_type for e in trail.context["page"].object_list if e.action == "viewed"]
        assert viewed == ["patient"] * today_inside, query
    reversed_dates = page.get(reverse("analysis-list"), {"date_from": LAST_DAY, "date_to": FIRST_DAY})
    assert "“To” is before “From”" in reversed_dates.content.decode()
    api = client_for(staff).get("/api/analyses/", {"created_after": FIRST_DAY, "created_before": LAST_DAY})
    assert [row["id"] for row in api.json()["results"]] == [urgent_benign.pk]


def test_patient_search_matches_any_part_of_a_name_or_an_mrn(page, staff):
    clinic = staff.membership.clinic
    wanted = finish(
        AnalysisFactory(
            image=LesionImageFactory(case=CaseFactory(patient=PatientFactory(clinic=clinic, mrn="AB-12345")))
        )
    )
    other = finish(
        AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=PatientFactory(clinic=clinic, mrn="ZZ-999"))))
    )
    html = page.get(reverse("analysis-list"), {"patient": "12345"}).content.decode()
    assert f">#{wanted.pk}<" in html and f">#{other.pk}<" not in html
