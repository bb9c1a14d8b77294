""" "The model in this clinic": the figures over the clinic's confirmed diagnoses equal a count made here, beside
the model card's; the drift warning follows the data; only the clinic's admin reads it."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from analysis import performance
from analysis.demo import CONFIRMED_AFTER
from analysis.models import Analysis, Membership, Outcome
from analysis.outcomes import record_outcome
from ml.serve.stats import wilson
from tests.factories import AnalysisFactory, LesionImageFactory, MembershipFactory, finish
from tests.test_api import client_for

pytestmark = pytest.mark.django_db

CARD = json.loads(settings.MODEL_METRICS.read_text())
VERSION = CARD["model_version"]
# Malignant probability 0.86, 0.24 and 0.03: urgent, uncertain and routine at the shipped thresholds (0.27, 0.22).
URGENT_MEL = {"akiec": 0.02, "bcc": 0.03, "bkl": 0.05, "df": 0.01, "mel": 0.81, "nv": 0.07, "vasc": 0.01}
UNCERTAIN_NV = {"akiec": 0.0, "bcc": 0.0, "bkl": 0.0, "df": 0.0, "mel": 0.24, "nv": 0.76, "vasc": 0.0}
ROUTINE_NV = {"akiec": 0.01, "bcc": 0.01, "bkl": 0.01, "df": 0.01, "mel": 0.01, "nv": 0.94, "vasc": 0.01}
TIERS = {"urgent": URGENT_MEL, "uncertain": UNCERTAIN_NV, "routine": ROUTINE_NV}


@pytest.fixture
def clinic_admin(staff):
    return MembershipFactory(
        user__username="boss", clinic=staff.membership.clinic, role=Membership.Role.CLINIC_ADMIN
    ).user


def seed(case, staff, diagnosis: str, tier: str, count: int, version: str = VERSION) -> list[Analysis]:
    """`count` done analyses of `tier` confirmed as `diagnosis` by histopathology a day ago."""
    made = []
    for _ in range(count):
        analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)), TIERS[tier], version)
        assert analysis.risk_tier == tier
        Outcome.objects.create(
            analysis=analysis,
            diagnosis=diagnosis,
            method="histo",
            confirmed_on=timezone.localdate() - timedelta(days=1),
            recorded_by=staff,
        )
        made.append(analysis)
    return made


@pytest.fixture
def ten_melanomas_eight_urgent(case, staff):
    """10 melanomas (8 urgent, 1 uncertain, 1 routine) and 20 naevi (2 urgent, 3 uncertain, 15 routine)."""
    return {
        ("mel", "urgent"): seed(case, staff, "mel", "urgent", 8),
        ("mel", "uncertain"): seed(case, staff, "mel", "uncertain", 1),
        ("mel", "routine"): seed(case, staff, "mel", "routine", 1),
        ("nv", "urgent"): seed(case, staff, "nv", "urgent", 2),
        ("nv", "uncertain"): seed(case, staff, "nv", "uncertain", 3),
        ("nv", "routine"): seed(case, staff, "nv", "routine", 15),
    }


def rate(hits: int, n: int) -> dict:
    return {"value": hits / n, "hits": hits, "n": n, "ci95": wilson(hits, n)}


def test_the_figures_equal_a_count_made_here(staff, ten_melanomas_eight_urgent):
    # Counted by hand from the fixture: urgent, uncertain, routine of the 10 melanomas and of the 20 naevi; the
    # urgent results' most likely class is melanoma, the others' naevus.
    figures = performance.clinic_performance(Analysis.objects.all(), VERSION)
    mine = figures["clinic"]
    assert (mine["n"], mine["malignant"], mine["benign"]) == (30, 10, 20)
    assert mine["urgent_sensitivity"] == rate(8, 10)
    assert mine["urgent_sensitivity"]["value"] == 0.8
    assert mine["urgent_specificity"] == rate(18, 20)
    assert mine["urgent_or_uncertain_sensitivity"] == rate(9, 10)
    assert mine["urgent_or_uncertain_specificity"] == rate(15, 20)
    assert mine["melanoma_recall"] == rate(8, 10)
    assert mine["accuracy"] == rate(8 + 18, 30)
    assert mine["balanced_accuracy"]["value"] == pytest.approx((0.8 + 0.9) / 2)
    low, high = mine["balanced_accuracy"]["ci95"]
    assert low < 0.85 < high
    matrix = mine["confusion_matrix"]
    mel, nv = 4, 5  # rows and columns in CLASS_CODES order
    assert (matrix[mel][mel], matrix[mel][nv], matrix[nv][mel], matrix[nv][nv]) == (8, 2, 2, 18)
    assert sum(map(sum, matrix)) == 30
    # Reliability: the urgent results (p 0.86) in the 0.8-0.9 bin, 8 of 10 malignant; the uncertain (0.24) in
    # 0.2-0.3, 1 of 4; the routine (0.03) in 0-0.1, 1 of 16.
    bins = {round(b["low"], 1): b for b in mine["reliability"] if b["n"]}
    assert {k: (b["hits"], b["n"]) for k, b in bins.items()} == {0.0: (1, 16), 0.2: (1, 4), 0.8: (8, 10)}
    assert bins[0.8]["ci95"] == wilson(8, 10) and bins[0.8]["mean_probability"] == pytest.approx(0.86)


def test_the_cards_figures_are_its_test_parts(ten_melanomas_eight_urgent):
    card = performance.clinic_performance(Analysis.objects.all(), VERSION)["card"]
    triage = CARD["triage"]["test"]
    assert card["urgent_sensitivity"] == triage["urgent"]["malignant_sensitivity"]
    assert card["urgent_or_uncertain_specificity"] == triage["urgent_or_uncertain"]["malignant_specificity"]
    assert card["accuracy"]["value"] == pytest.approx(CARD["test"]["accuracy"])
    assert card["melanoma_recall"]["value"] == pytest.approx(CARD["test"]["melanoma_recall"])
    assert card["balanced_accuracy"]["value"] == CARD["test"]["balanced_accuracy"]


def test_another_model_versions_analyses_are_not_compared_with_this_card(case, staff):
    seed(case, staff, "mel", "urgent", 2, version="older-model")
    figures = performance.clinic_performance(Analysis.objects.all(), "older-model")
    assert figures["clinic"]["n"] == 2 and figures["card"] is None and figures["warnings"] == []
    assert performance.clinic_performance(Analysis.objects.all(), VERSION)["clinic"]["n"] == 0


def test_the_page_shows_each_rate_with_its_count_interval_and_the_cards_figure(
    client, clinic_admin, ten_melanomas_eight_urgent
):
    client.force_login(clinic_admin)
    response = client.get(reverse("clinic-model", args=[clinic_admin.membership.clinic_id]))
    assert response.status_code == 200
    page = response.content.decode()
    low, high = wilson(8, 10)
    assert f"8 of 10: 80.0% (95% interval {low * 100:.1f}–{high * 100:.1f}%)" in page
    card = CARD["triage"]["test"]["urgent"]["malignant_sensitivity"]
    assert f"{card['hits']} of {card['n']}: {card['value']:.1%}" in page
    assert "30 analyses with a confirmed diagnosis: 10 malignant" in page
    assert 'id="drift-warning"' not in page
    assert page.count('class="point"') == 3  # three bins of the reliability diagram hold lesions
    assert "<script" not in page.split("<main")[1].split("</main>")[0]


def test_the_drift_warning_appears_with_low_sensitivity_and_goes_when_corrections_explain_it(
    client, clinic_admin, case, staff
):
    urgent = seed(case, staff, "mel", "urgent", 3)
    missed = seed(case, staff, "bcc", "routine", 7)
    seed(case, staff, "nv", "routine", 10)
    url = reverse("clinic-model", args=[clinic_admin.membership.clinic_id])
    client.force_login(clinic_admin)

    page = client.get(url).content.decode()
    # 3 of 10 malignant lesions urgent: the interval (about 11%-60%) lies wholly below the card's 85.6%.
    assert wilson(3, 10)[1] < CARD["triage"]["test"]["urgent"]["malignant_sensitivity"]["value"]
    warning = page.split('id="drift-warning"')[1].split("</div>")[0]
    assert "The model misses more cancers in this clinic than its model card says" in warning
    assert "Of the 10 malignant lesions confirmed here, the urgent tier caught 3" in warning
    assert "What to do" in warning and "export_outcomes" in warning
    api = client_for(clinic_admin).get(reverse("api:clinic-performance", args=[clinic_admin.membership.clinic_id]))
    assert [w["measure"] for w in api.json()["warnings"]] == ["urgent_sensitivity", "urgent_or_uncertain_sensitivity"]

    # A second look at six of the "missed" ones: they were naevi after all. 3 of 4 urgent: no warning.
    for analysis in missed[:6]:
        record_outcome(analysis, staff, diagnosis="nv", method="consensus", confirmed_on=timezone.localdate())
    page = client.get(url).content.decode()
    assert 'id="drift-warning"' not in page and "3 of 4: 75.0%" in page
    assert len(urgent) == 3


def test_with_no_confirmed_diagnosis_the_page_says_so(client, clinic_admin, analysis):
    client.force_login(clinic_admin)
    page = client.get(reverse("clinic-model", args=[clinic_admin.membership.clinic_id])).content.decode()
    assert "No confirmed diagnoses yet" in page and 'id="rates"' not in page


def test_diagnoses_outside_the_7_classes_are_counted_and_left_out(client, clinic_admin, case, staff):
    seed(case, staff, "mel", "urgent", 2)
    (scc,) = seed(case, staff, "mel", "routine", 1)
    record_outcome(
        scc,
        staff,
        diagnosis="other",
        other_diagnosis="Invasive squamous cell carcinoma",
        method="histo",
        confirmed_on=timezone.localdate(),
    )
    figures = performance.clinic_performance(Analysis.objects.all(), VERSION)
    assert (figures["clinic"]["n"], figures["other"]) == (2, 1)
    client.force_login(clinic_admin)
    page = client.get(reverse("clinic-model", args=[clinic_admin.membership.clinic_id])).content.decode()
    assert "1 confirmed as a diagnosis outside the 7 classes is left out" in page


def test_the_date_range_and_model_version_choose_the_analyses(client, clinic_admin, case, staff):
    old = seed(case, staff, "mel", "routine", 2)
    Analysis.objects.filter(pk__in=[a.pk for a in old]).update(created_at=timezone.now() - timedelta(days=100))
    seed(case, staff, "mel", "urgent", 3)
    seed(case, staff, "nv", "routine", 4, version="older-model")
    client.force_login(clinic_admin)
    url = reverse("clinic-model", args=[clinic_admin.membership.clinic_id])

    def summary(**params):
        return client.get(url, params).content.decode().split('id="summary">')[1].split(":")[0]

    assert summary() == "5 analyses with a confirmed diagnosis"  # the shipped model's, by default
    since = str(timezone.localdate() - timedelta(days=30))
    assert summary(date_from=since) == "3 analyses with a confirmed diagnosis"
    assert summary(model_version="older-model") == "4 analyses with a confirmed diagnosis"
    assert summary(model_version="all") == "9 analyses with a confirmed diagnosis"
    page = client.get(url, {"date_from": "2026-02-01", "date_to": "2026-01-01"}).content.decode()
    assert "Swap the dates" in page


def test_the_api_answers_the_same_figures(clinic_admin, ten_melanomas_eight_urgent):
    response = client_for(clinic_admin).get(reverse("api:clinic-performance", args=[clinic_admin.membership.clinic_id]))
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == VERSION and body["warnings"] == []
    assert body["clinic_figures"]["urgent_sensitivity"] == rate(8, 10)
    assert body["model_card"]["urgent_sensitivity"] == CARD["triage"]["test"]["urgent"]["malignant_sensitivity"]
    assert body["clinic_figures"]["per_class_recall"]["akiec"]["value"] is None  # none to count: null, not NaN
    bad = client_for(clinic_admin).get(
        reverse("api:clinic-performance", args=[clinic_admin.membership.clinic_id]), {"date_from": "soon"}
    )
    assert bad.status_code == 400 and "date_from" in bad.json()


# Who reads it


def test_a_member_who_is_not_the_clinic_admin_cannot_open_the_page(client, staff):
    client.force_login(staff)
    assert client.get(reverse("clinic-model", args=[staff.membership.clinic_id])).status_code == 403
    api = client_for(staff).get(reverse("api:clinic-performance", args=[staff.membership.clinic_id]))
    assert api.status_code == 403


def test_an_outsider_gets_404_for_another_clinics_page(client, staff, outsider):
    Membership.objects.filter(user=outsider).update(role=Membership.Role.CLINIC_ADMIN)
    client.force_login(outsider)
    assert client.get(reverse("clinic-model", args=[staff.membership.clinic_id])).status_code == 404
    api = client_for(outsider).get(reverse("api:clinic-performance", args=[staff.membership.clinic_id]))
    assert api.status_code == 404
    assert client.get(reverse("clinic-model", args=[outsider.membership.clinic_id])).status_code == 200


def test_the_menu_offers_the_page_to_the_clinic_admin_only(client, staff, clinic_admin):
    url = reverse("clinic-model", args=[staff.membership.clinic_id])
    client.force_login(clinic_admin)
    assert url in client.get(reverse("home")).content.decode()
    client.force_login(staff)
    assert url not in client.get(reverse("home")).content.decode()


# seed_demo


def test_seed_demo_confirms_part_of_its_results_with_figures_like_the_cards(client):
    from django.core.management import call_command

    call_command("seed_demo", "--patients", "400")
    outcomes = Outcome.objects.select_related("analysis")
    assert 0.25 < outcomes.count() / Analysis.objects.filter(status="done").count() < 0.45
    # Every tier confirmed about as often: a bias towards urgent results would flatter the sensitivity.
    shares = {}
    for tier in ["urgent", "uncertain", "routine"]:
        old = Analysis.objects.filter(
            status="done", risk_tier=tier, finished_at__lt=timezone.now() - CONFIRMED_AFTER
        ).count()
        shares[tier] = outcomes.filter(analysis__risk_tier=tier).count() / old
    assert max(shares.values()) - min(shares.values()) < 0.15, shares
    assert all(o.recorded_at >= o.analysis.finished_at for o in outcomes)
    figures = performance.clinic_performance(Analysis.objects.all(), VERSION)
    assert figures["clinic"]["n"] == outcomes.count() and figures["warnings"] == []
    for key in ["urgent_sensitivity", "melanoma_recall", "accuracy"]:
        assert figures["clinic"][key]["value"] == pytest.approx(figures["card"][key]["value"], abs=0.1), key
