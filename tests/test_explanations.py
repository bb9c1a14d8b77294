"""What the service does with the model's explanation: the Grad-CAM heatmap, the quality gate's flags and the
triage tier are stored with the result and shown on the page, in the API and in the PDF, to the clinic only."""

import io
from pathlib import Path
from unittest import mock

import pytest
from django.urls import reverse
from PIL import Image
from pypdf import PdfReader
from rest_framework.authtoken.models import Token

from analysis import reports
from analysis.models import Analysis
from ml.serve import tiers
from tests.factories import AnalysisFactory, LesionImageFactory, finish
from workers import tasks

pytestmark = pytest.mark.django_db

FLAG = "The image is almost uniform: it may be blank or a black frame."


def probabilities_with_malignant(p: float) -> dict[str, float]:
    """Seven probabilities whose malignant share (mel + bcc + akiec) is p."""
    return {
        "akiec": p / 4,
        "bcc": p / 4,
        "mel": p / 2,
        "bkl": (1 - p) / 4,
        "df": 0.0,
        "nv": 3 * (1 - p) / 4,
        "vasc": 0.0,
    }


def heatmap_png(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def finished(
    case, staff, malignant_share: float, flags=(), png: bytes | None = None, version: str = "v-test"
) -> Analysis:
    analysis = AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))
    finish(analysis, probabilities_with_malignant(malignant_share), version, quality_flags=flags, heatmap_png=png)
    return Analysis.objects.get(pk=analysis.pk)


@pytest.fixture
def thresholds():
    rule = tiers.load_triage()
    return rule.routine_threshold, rule.urgent_threshold


# The stored result


def test_finish_stores_tier_malignant_probability_flags_and_heatmap_together(case, staff, thresholds):
    routine, urgent = thresholds
    analysis = finished(case, staff, min(0.99, urgent + 0.01), png=heatmap_png())
    assert analysis.status == "done"
    assert analysis.risk_tier == "urgent"
    assert analysis.malignant_probability == pytest.approx(min(0.99, urgent + 0.01))
    assert analysis.quality_flags == [] and not analysis.flagged
    assert analysis.heatmap.name.startswith("heatmaps/") and analysis.heatmap.read(8) == b"\x89PNG\r\n\x1a\n"


def test_tiers_follow_the_thresholds_and_a_flagged_image_is_always_uncertain(case, staff, thresholds):
    routine, urgent = thresholds
    assert finished(case, staff, routine / 2).risk_tier == "routine"
    assert finished(case, staff, (routine + urgent) / 2).risk_tier == "uncertain"
    assert finished(case, staff, min(0.99, urgent + 0.01)).risk_tier == "urgent"
    flagged = finished(case, staff, min(0.99, urgent + 0.01), flags=[FLAG])
    assert (flagged.risk_tier, flagged.quality_flags, flagged.flagged) == ("uncertain", [FLAG], True)


def test_a_lost_race_leaves_no_heatmap_file_behind(case, staff, settings):
    analysis = AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))  # never claimed
    with pytest.raises(Analysis.InvalidTransition):
        analysis.finish(probabilities_with_malignant(0.5), "v-test", heatmap_png=heatmap_png())
    assert not list(Path(settings.MEDIA_ROOT, "heatmaps").glob("*"))
    assert Analysis.objects.get(pk=analysis.pk).status == "queued"


def test_the_task_stores_the_explanation_of_the_predicted_class(case, staff):
    analysis = AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))
    prediction = mock.Mock(probabilities=probabilities_with_malignant(0.9), model_version="v-test")
    prediction.predicted_class = max(prediction.probabilities, key=prediction.probabilities.get)
    explanation = mock.Mock(prediction=prediction, overlay=Image.new("RGB", (40, 30), "red"), quality_flags=[FLAG])
    with mock.patch.object(tasks, "explainer") as explainer, mock.patch.object(tasks.render_report, "delay"):
        explainer.return_value.explain.return_value = explanation
        assert tasks.analyse.run(analysis.pk) == "done"
    # One pass: the explainer's own prediction, its heatmap of the predicted class (the default) and its flags.
    (picture,), options = explainer.return_value.explain.call_args
    assert options == {} and picture.size == (40, 30)
    analysis.refresh_from_db()
    assert (analysis.status, analysis.quality_flags, analysis.risk_tier) == ("done", [FLAG], "uncertain")
    with Image.open(analysis.heatmap) as stored:
        assert (stored.format, stored.size, stored.getpixel((5, 5))) == ("PNG", (40, 30), (255, 0, 0))


# Who sees it


def test_the_heatmap_is_served_to_the_clinic_only(client, case, staff, colleague, outsider):
    analysis = finished(case, staff, 0.5, png=heatmap_png())
    url = reverse("analysis-heatmap", args=[analysis.pk])
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(colleague)
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    client.force_login(outsider)
    assert client.get(url).status_code == 404


def test_an_analysis_without_a_heatmap_answers_404(client, case, staff):
    analysis = finished(case, staff, 0.5)
    client.force_login(staff)
    assert client.get(reverse("analysis-heatmap", args=[analysis.pk])).status_code == 404


def test_the_analysis_page_shows_heatmap_tier_and_flags(client, case, staff, thresholds):
    routine, urgent = thresholds
    analysis = finished(case, staff, min(0.99, urgent + 0.01), flags=[FLAG], png=heatmap_png())
    client.force_login(staff)
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    assert reverse("analysis-heatmap", args=[analysis.pk]) in page
    assert "Image flagged by the quality check." in page and FLAG in page
    assert 'class="badge tier-uncertain">Uncertain<' in page
    assert reports.TIER_MEANING["uncertain"] in page


def test_the_dashboard_lists_unopened_urgent_results_before_uncertain_ones(client, case, staff, thresholds):
    routine, urgent = thresholds
    older_uncertain = finished(case, staff, (routine + urgent) / 2)
    urgent_result = finished(case, staff, min(0.99, urgent + 0.01))
    flagged = finished(case, staff, routine / 2, flags=[FLAG])
    finished(case, staff, routine / 2)  # routine: not on the attention list
    client.force_login(staff)
    response = client.get("/")
    assert list(response.context["unopened"]) == [urgent_result, older_uncertain, flagged]
    assert response.context["in_progress"] == {
        "queued": 0,
        "running": 0,
        "unopened_urgent": 1,
        "unopened_uncertain": 2,
    }
    client.get(reverse("analysis-detail", args=[urgent_result.pk]))
    assert list(client.get("/").context["unopened"]) == [older_uncertain, flagged]


def test_past_analyses_filter_by_tier_and_by_flag(client, case, staff, thresholds):
    routine, urgent = thresholds
    urgent_result = finished(case, staff, min(0.99, urgent + 0.01))
    flagged = finished(case, staff, routine / 2, flags=[FLAG])
    finished(case, staff, routine / 2)
    client.force_login(staff)
    listed = client.get(reverse("analysis-list"), {"risk_tier": "urgent"}).context["page"].object_list
    assert list(listed) == [urgent_result]
    listed = client.get(reverse("analysis-list"), {"flagged": "on"}).context["page"].object_list
    assert list(listed) == [flagged]


# The API


def test_the_api_gives_tier_flags_and_the_heatmap(client, case, staff, outsider, thresholds):
    routine, urgent = thresholds
    analysis = finished(case, staff, min(0.99, urgent + 0.01), flags=[FLAG], png=heatmap_png())
    headers = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=staff).key}"}
    data = client.get(f"/api/analyses/{analysis.pk}/", **headers).json()
    assert (data["risk_tier"], data["flagged"], data["quality_flags"]) == ("uncertain", True, [FLAG])
    assert data["malignant_probability"] == pytest.approx(analysis.malignant_probability)
    assert data["heatmap"] == f"http://testserver/api/analyses/{analysis.pk}/heatmap/"
    response = client.get(data["heatmap"], **headers)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert [a["id"] for a in client.get("/api/analyses/", {"risk_tier": "uncertain"}, **headers).json()["results"]] == [
        analysis.pk
    ]
    outsider_headers = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=outsider).key}"}
    assert client.get(data["heatmap"], **outsider_headers).status_code == 404


def test_a_queued_analysis_has_no_tier_flag_or_heatmap_in_the_api(client, case, staff):
    analysis = AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))
    headers = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=staff).key}"}
    data = client.get(f"/api/analyses/{analysis.pk}/", **headers).json()
    assert (data["risk_tier"], data["flagged"], data["heatmap"], data["malignant_probability"]) == (
        "",
        None,
        None,
        None,
    )
    assert client.get(f"/api/analyses/{analysis.pk}/heatmap/", **headers).status_code == 404


# The PDF


def pdf_text(data: bytes) -> str:
    return " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages).split())


def test_the_report_shows_the_heatmap_beside_the_image_and_states_tier_and_flags(case, staff, thresholds):
    routine, urgent = thresholds
    analysis = finished(case, staff, min(0.99, urgent + 0.01), flags=[FLAG], png=heatmap_png())
    pdf = reports.render_pdf(analysis)
    text = pdf_text(pdf)
    assert "Image flagged by the quality check." in text and FLAG in text
    assert "TRIAGE: UNCERTAIN" in text.upper()
    assert "Grad-CAM" in text
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    formats = sorted({Path(image.name).suffix for image in reader.pages[0].images})
    assert formats == [".jpg", ".png"]  # the lesion (a JPEG) and its heatmap (a PNG)


def test_an_unflagged_report_says_nothing_about_flags(case, staff, thresholds):
    routine, urgent = thresholds
    analysis = finished(case, staff, routine / 2, png=heatmap_png())
    text = pdf_text(reports.render_pdf(analysis))
    assert "flagged" not in text.lower()
    assert "TRIAGE: ROUTINE" in text.upper()


def test_the_shipped_models_thresholds_and_their_test_figures_are_stated_on_page_and_report(client, case, staff):
    rule = tiers.load_triage()
    analysis = finished(case, staff, min(0.99, rule.urgent_threshold + 0.01), version=rule.model_version)
    measured = rule.describe()["test"]["urgent"]["melanoma_sensitivity"]["value"]
    sentence = f"the urgent tier caught {measured:.0%} of melanomas"
    assert (
        f"Urgent from a malignant probability of {rule.urgent_threshold:.1%}"
        in reports.triage_summary(rule.model_version)["explanation"]
    )
    client.force_login(staff)
    assert sentence in client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    assert sentence in pdf_text(reports.render_pdf(analysis))
    assert reports.triage_summary("another-model") is None  # thresholds belong to one model version
