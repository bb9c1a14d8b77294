"""The PDF report, read back from WeasyPrint's real output."""

import io
import json
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
import tinycss2
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from PIL import Image
from pypdf import PdfReader

from analysis import fhir, reports
from analysis.classes import CLASS_NAMES
from analysis.models import Analysis
from tests.cards import group
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, encoded, finish
from workers import tasks

pytestmark = pytest.mark.django_db
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

PROBABILITIES = {"akiec": 0.021, "bcc": 0.034, "bkl": 0.112, "df": 0.008, "mel": 0.712, "nv": 0.101, "vasc": 0.012}


@pytest.fixture
def done_analysis(staff, patient, settings, tmp_path):
    patient.name, patient.mrn, patient.date_of_birth, patient.sex = (
        "Ada Example",
        "MRN-4711",
        date(1970, 5, 1),
        "female",
    )
    patient.save()
    clinic = patient.clinic
    clinic.name, clinic.time_zone = "Praxis Nord", "Europe/Vienna"
    clinic.save()
    image = LesionImageFactory(case=CaseFactory(patient=patient, clinician=staff, body_site="back"), uploaded_by=staff)
    analysis = finish(AnalysisFactory(image=image), PROBABILITIES, "mnv2-test-version")
    card = tmp_path / "metrics.json"
    card.write_text(
        json.dumps(
            {
                "model_version": "mnv2-test-version",
                "test": {"accuracy": 0.8123, "balanced_accuracy": 0.7345, "melanoma_recall": 0.7012, "n": 1995},
            }
        )
    )
    settings.MODEL_METRICS = card
    return analysis


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def body_text(data: bytes) -> str:
    """The text of every page without its footer lines, whitespace normalised: phrases read across page breaks."""
    lines = [
        line for line in pdf_text(data).splitlines() if "· MRN " not in line and not re.match(r"Page \d+ of", line)
    ]
    return " ".join(" ".join(lines).split())


def test_the_report_states_patient_result_every_probability_model_and_disclaimer(done_analysis):
    pdf = reports.render_pdf(Analysis.objects.get(pk=done_analysis.pk))
    assert pdf.startswith(b"%PDF-")
    text = body_text(pdf)
    assert "MRN-4711" in text and "Ada Example" in text and "Praxis Nord" in text
    assert "Most likely class: Melanoma (mel)" in text
    assert "Triage: URGENT · malignant probability" in text  # the headline, before the class
    assert text.index("Triage: URGENT") < text.index("Most likely class: Melanoma (mel)")
    assert "a malignant class" in text
    for code, p in PROBABILITIES.items():
        assert f"{CLASS_NAMES[code]} {code} {round(100 * p, 1)}%" in text
    assert "mnv2-test-version" in text
    # From the model card file, as percentages like every other figure, and the two melanoma figures told apart
    assert "accuracy 81.2%" in text and "balanced accuracy 73.5%" in text and "melanoma recall 70.1%" in text
    assert "melanoma recall is the share of test melanomas whose single most likely class was melanoma" in text
    assert "Screening aid only, not a diagnosis" in text
    footers = " ".join(pdf_text(pdf).split())
    assert "Page 1 of 1" in footers  # one page, numbered
    assert f"Praxis Nord · report {done_analysis.pk} · MRN MRN-4711" in footers  # the footer of every page


def test_the_probability_table_is_sorted_highest_first(done_analysis):
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=done_analysis.pk)))
    table = text[text.index("Probability") :]
    positions = [
        table.index(f"{CLASS_NAMES[c]} {c} ") for c in sorted(PROBABILITIES, key=PROBABILITIES.get, reverse=True)
    ]
    assert positions == sorted(positions)


def test_a_model_version_without_its_card_says_so_rather_than_showing_numbers(done_analysis, settings, tmp_path):
    settings.MODEL_METRICS = tmp_path / "missing.json"
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=done_analysis.pk)))
    assert "measured accuracy is not shown" in text


def test_the_report_prints_the_clinics_local_times_as_the_page_and_fhir_do(done_analysis, client, staff, settings):
    # A worker in California, a clinic at UTC+14, times a little after 10:00 UTC: past midnight at the clinic.
    settings.TIME_ZONE = "America/Los_Angeles"
    clinic = done_analysis.image.case.patient.clinic
    clinic.time_zone = "Pacific/Kiritimati"
    clinic.save()
    Analysis.objects.filter(pk=done_analysis.pk).update(finished_at=datetime(2026, 12, 7, 10, 30, 40, tzinfo=UTC))
    type(done_analysis.image).objects.filter(pk=done_analysis.image.pk).update(
        captured_at=datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    )
    analysis = Analysis.objects.get(pk=done_analysis.pk)

    text = body_text(reports.render_pdf(analysis))
    client.force_login(staff)
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()

    assert "analysed 8 December 2026, 00:30 (Pacific/Kiritimati)" in text
    assert "taken 8 December 2026, 00:05 (Pacific/Kiritimati)" in text
    assert "<dt>Finished</dt><dd>8 Dec 2026 00:30 +14</dd>" in page
    assert fhir.instant(analysis.finished_at, ZoneInfo(clinic.time_zone)) == "2026-12-08T00:30:40+14:00"


@pytest.mark.parametrize("image_number", [7, 99_999])
def test_the_clinics_zone_is_never_broken_across_lines(done_analysis, image_number):
    # A longer image number moves the line's end to the zone's slash; the name must stay one piece.
    clinic = done_analysis.image.case.patient.clinic
    clinic.time_zone = "America/Argentina/ComodRivadavia"
    clinic.save()
    analysis = Analysis.objects.get(pk=done_analysis.pk)
    analysis.image.pk = image_number
    text = body_text(reports.render_pdf(analysis))
    assert text.count("America/Argentina/ComodRivadavia") == 2  # analysed ..., and taken or uploaded ...


SUBGROUPS = {
    "body_site": [
        group("back", 62, 39, 405, 0.7654),
        group("face", 20, 8, 135, 0.637),
        group("hand", 0, 0, 19, 0.842),
    ],
    "sex": [group("male", 141, 77, 1074, 0.752), group("female", 79, 50, 907, 0.8357)],
    "age": [
        group("under 30", 5, 4, 120, 0.858),
        group("30-49", 41, 16, 706, 0.85),
        group("50-69", 86, 50, 738, 0.78),
        group("unknown", 0, 0, 12, 1.0),
    ],
}


@pytest.fixture
def card_with_groups(done_analysis, settings):
    card = json.loads(Path(settings.MODEL_METRICS).read_text())
    Path(settings.MODEL_METRICS).write_text(json.dumps({**card, "subgroups": SUBGROUPS}))
    return done_analysis


def test_the_report_gives_the_cards_figures_for_test_lesions_like_this_one(card_with_groups):
    pdf = reports.render_pdf(Analysis.objects.get(pk=card_with_groups.pk))
    text = body_text(pdf)
    # A lesion on the back of a woman born in 1970, photographed now: in her fifties or sixties.
    assert (
        "Test lesions like this one images accuracy melanomas found Back 405 76.5% 39 of 62 Female 907 83.6% 50 of 79 "
        "Aged 50-69 738 78.0% 50 of 86" in text
    )
    assert "Page 1 of 1" in " ".join(pdf_text(pdf).split())  # still one page


def test_a_report_with_everything_on_it_still_fits_one_page(card_with_groups, staff):
    """A long report: a card with groups, two quality flags with a heatmap, long names, a capture time and a long
    time zone name."""
    image = card_with_groups.image
    patient = image.case.patient
    clinic = patient.clinic
    clinic.name, clinic.time_zone = "Dermatologische Gemeinschaftspraxis Nordstadt", "America/Argentina/Buenos_Aires"
    clinic.save()
    patient.name = "Maximiliane Alexandra von Hohenberg-Wittelsbach"
    patient.save()
    staff.first_name, staff.last_name = "Konstantin", "Oberhuber-Lindqvist"
    staff.save()
    image.captured_at = timezone.now() - timedelta(days=3)
    image.save()
    flags = ["The image is almost uniform: it may be blank or a black frame.", "The picture is out of focus."]
    heatmap = encoded(Image.new("RGB", (40, 30), "red"), "PNG")
    analysis = finish(
        AnalysisFactory(image=image), PROBABILITIES, "mnv2-test-version", quality_flags=flags, heatmap_png=heatmap
    )
    pdf = reports.render_pdf(Analysis.objects.get(pk=analysis.pk))
    text = body_text(pdf)
    assert "Image flagged by the quality check." in text and "Grad-CAM" in text and "Aged 50-69" in text
    assert "Konstantin Oberhuber-Lindqvist" in text and "Buenos_Aires" in text
    assert "Melanoma mel 71.2% malignant Benign keratosis-like lesion bkl 11.2% Melanocytic nevus" in text
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1


def test_the_age_band_is_the_patients_age_when_the_image_was_taken(card_with_groups):
    image = card_with_groups.image  # the patient was born on 1 May 1970
    for taken, band in (
        (datetime(2000, 4, 30, 12, tzinfo=UTC), "under 30"),
        (datetime(2000, 5, 1, 12, tzinfo=UTC), "30-49"),
    ):
        image.captured_at = taken
        image.save()
        groups = reports.similar_lesions(Analysis.objects.get(pk=card_with_groups.pk))
        assert [g["group"] for g in groups] == ["back", "female", band]
    assert reports.years_between(date(2000, 2, 29), date(2001, 2, 28)) == 0


def test_groups_the_case_does_not_name_or_the_card_lacks_are_left_out(card_with_groups):
    analysis = Analysis.objects.get(pk=card_with_groups.pk)
    case, patient = analysis.image.case, analysis.image.case.patient
    case.body_site = "scalp"  # not among the card's sites
    case.save()
    patient.sex, patient.date_of_birth = "unknown", None
    patient.save()
    assert reports.similar_lesions(Analysis.objects.get(pk=analysis.pk)) == []
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=analysis.pk)))
    assert "test lesions like this one" not in text and "accuracy 81.2%" in text


def test_another_model_versions_groups_are_not_shown(card_with_groups):
    analysis = Analysis.objects.get(pk=card_with_groups.pk)
    assert [g["group"] for g in reports.similar_lesions(analysis)] == ["back", "female", "50-69"]
    analysis.model_version = "mnv2-an-older-version"
    assert reports.similar_lesions(analysis) == []


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="poppler's pdftoppm is not installed")
def test_page_one_renders_to_png_as_an_artifact(done_analysis):
    ARTIFACTS.mkdir(exist_ok=True)
    pdf = ARTIFACTS / "report-example.pdf"
    pdf.write_bytes(reports.render_pdf(Analysis.objects.get(pk=done_analysis.pk)))
    subprocess.run(
        ["pdftoppm", "-png", "-r", "80", "-singlefile", str(pdf), str(ARTIFACTS / "report-page1")], check=True
    )
    png = ARTIFACTS / "report-page1.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_store_report_attaches_the_file_under_a_generated_name(done_analysis):
    reports.store_report(done_analysis)
    done_analysis.refresh_from_db()
    assert done_analysis.report.name.startswith("reports/")
    assert "MRN" not in done_analysis.report.name  # no patient data in stored file names
    assert done_analysis.report.read(5) == b"%PDF-"


def test_staff_and_colleague_download_the_report_with_a_clear_name(client, staff, colleague, done_analysis):
    reports.store_report(done_analysis)
    for user in (staff, colleague):
        client.force_login(user)
        response = client.get(reverse("analysis-report", args=[done_analysis.pk]))
        assert response.status_code == 200
        assert response["Content-Type"] == "application/pdf"
        disposition = response["Content-Disposition"]
        assert "skinsite_praxis-nord_mrn-4711_" in disposition and f"analysis-{done_analysis.pk}.pdf" in disposition
        assert b"".join(response.streaming_content)[:5] == b"%PDF-"


def test_outsider_gets_404_for_another_clinics_report(client, outsider, done_analysis):
    reports.store_report(done_analysis)
    client.force_login(outsider)
    assert client.get(reverse("analysis-report", args=[done_analysis.pk])).status_code == 404


def test_anonymous_is_sent_to_login_for_a_report(client, done_analysis):
    reports.store_report(done_analysis)
    response = client.get(reverse("analysis-report", args=[done_analysis.pk]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_report_is_404_until_the_worker_has_written_it_and_asks_for_it(client, staff, done_analysis):
    client.force_login(staff)
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        assert client.get(reverse("analysis-report", args=[done_analysis.pk])).status_code == 404
    render.assert_called_once_with((done_analysis.pk,), retry=False)


def test_a_report_whose_file_went_missing_is_produced_again(client, staff, done_analysis):
    reports.store_report(done_analysis)
    done_analysis.refresh_from_db()
    done_analysis.report.storage.delete(done_analysis.report.name)
    client.force_login(staff)
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        assert client.get(reverse("analysis-report", args=[done_analysis.pk])).status_code == 404
    render.assert_called_once_with((done_analysis.pk,), retry=False)
    assert tasks.render_report.run(done_analysis.pk) == "done"  # what the worker then does
    response = client.get(reverse("analysis-report", args=[done_analysis.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:5] == b"%PDF-"


def test_the_report_task_writes_a_report_only_once(done_analysis):
    assert tasks.render_report.run(done_analysis.pk) == "done"
    first = Analysis.objects.get(pk=done_analysis.pk).report.name
    assert tasks.render_report.run(done_analysis.pk).startswith("skipped")
    assert Analysis.objects.get(pk=done_analysis.pk).report.name == first


HOSTILE_MRN = "\f}@font-face{font-family:x;src:url(http://169.254.169.254/x)}.x{"  # MRNs hold 64 characters
HOSTILE_CLINIC = 'Praxis "Nord" \\ \r} .disclaimer{display:none} @import url(file:///etc/passwd); .y{\n'


def test_a_hostile_mrn_or_clinic_name_is_printed_in_the_footer_not_obeyed_as_css(done_analysis, monkeypatch):
    patient = done_analysis.image.case.patient
    patient.mrn = HOSTILE_MRN
    patient.save()
    patient.clinic.name = HOSTILE_CLINIC
    patient.clinic.save()
    asked = []
    check = reports.check_report_url
    monkeypatch.setattr(reports, "check_report_url", lambda url: asked.append(url) or check(url))

    pdf = reports.render_pdf(Analysis.objects.get(pk=done_analysis.pk))

    assert [url[:15] for url in asked] == ["data:image/jpeg"]  # the report's fetcher, asked only for the picture
    assert "Screening aid only, not a diagnosis" in body_text(pdf)
    footers = " ".join(pdf_text(pdf).split())
    assert "src:url(http://169.254.169.254/x)}.x{" in footers  # the MRN as text, to its end
    assert '"Nord" \\' in footers and ".disclaimer{display:none} @import url(file:///etc/passwd);" in footers


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "https://example.org/logo.png"])
def test_the_report_fetcher_refuses_network_urls(url):
    with pytest.raises(reports.RefusedReportURL):
        reports.report_url_fetcher()(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "FILE:///etc/passwd", f"file://{ARTIFACTS}/report-example.pdf"])
def test_the_report_fetcher_refuses_local_files(url):
    with pytest.raises(reports.RefusedReportURL):
        reports.report_url_fetcher()(url)


def test_the_report_fetcher_loads_the_data_urls_a_report_embeds():
    assert reports.report_url_fetcher()("data:text/plain;base64,b2s=").read() == b"ok"


@pytest.mark.parametrize("text", ["\n", "\r", "\f", "\r\n", "\t", "\x00", "\x1f", "\x7f", '"', "'", "\\", "</style>"])
def test_css_string_keeps_any_character_inside_one_string(text):
    value = f"A-1{text}}} @import url(http://x/);"
    literal = reports.css_string(value)
    tokens = tinycss2.parse_component_value_list(literal)
    assert [t.type for t in tokens] == ["string"]
    assert tokens[0].value == value.replace("\x00", "\ufffd")  # CSS reads an escaped NUL as U+FFFD
    assert not re.search(r"[\x00-\x1f\x7f<>&'\\\"]", literal[1:-1].replace("\\", ""))  # only escapes, no raw ones


def test_polling_a_missing_report_asks_the_workers_once_per_wait(client, staff, done_analysis):
    client.force_login(staff)
    url = reverse("analysis-report", args=[done_analysis.pk])
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        for _ in range(5):  # a client polling every 2 s
            assert client.get(url).status_code == 404
        render.assert_called_once_with((done_analysis.pk,), retry=False)
        Analysis.objects.filter(pk=done_analysis.pk).update(
            report_requested_at=timezone.now() - Analysis.REPORT_WAIT - timedelta(seconds=1)
        )
        assert client.get(url).status_code == 404  # that render was lost: ask again
    assert render.call_count == 2


def test_a_report_request_the_broker_refused_is_asked_again_on_the_next_poll(client, staff, done_analysis):
    client.force_login(staff)
    url = reverse("analysis-report", args=[done_analysis.pk])
    with mock.patch.object(tasks.render_report, "apply_async", side_effect=BrokerError("down")) as render:
        client.get(url)
        client.get(url)
    assert render.call_count == 2


def test_a_render_that_finishes_second_discards_its_pdf(done_analysis, settings):
    """Two workers render the same report at once; the slower one must not leave its file of patient data."""
    render_pdf, raced = reports.render_pdf, []

    def render_while_another_worker_attaches(analysis):
        if not raced:
            raced.append(True)
            assert tasks.render_report.run(done_analysis.pk) == "done"
        return render_pdf(analysis)

    with mock.patch.object(reports, "render_pdf", side_effect=render_while_another_worker_attaches):
        assert tasks.render_report.run(done_analysis.pk).startswith("skipped")
    stored = Analysis.objects.get(pk=done_analysis.pk).report
    assert [f"reports/{f.name}" for f in (Path(settings.MEDIA_ROOT) / "reports").iterdir()] == [stored.name]
    assert stored.read(5) == b"%PDF-"
