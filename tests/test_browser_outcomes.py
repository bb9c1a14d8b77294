"""In Chromium: a confirmed diagnosis recorded on the analysis page, and "The model in this clinic" at volume,
drawn within the Content-Security-Policy with no console error. Screenshots go to artifacts/ (docs/clinic-model.png
in the README is the page's)."""

import shutil

import pytest
from django.db import connections
from django.urls import reverse

from analysis.demo import seed_clinic
from analysis.models import Membership, Outcome
from tests.factories import AnalysisFactory, LesionImageFactory, MembershipFactory, finish
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, REPORT_CSP_VIOLATIONS, shot, sign_in

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = [
    pytest.mark.stack,  # a real browser process
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium) for the browser test"
    ),
]


# An element styled inline: none of ours is (the policy refuses inline style). Chromium 155's form handling itself
# sometimes leaves an empty style="" on inputs (the sign-out form's hidden one, date inputs) for a while after a
# page loads, which styles nothing.
STYLED = '[style]:not([style=""])'


@pytest.fixture
def chromium(monkeypatch):
    """Chromium through Playwright, as tests/test_browser.py's `browser` fixture starts it."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
        connections.close_all()  # this thread's connections while Playwright's loop runs (see test_browser)


def console_errors(page) -> list[str]:
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def open_page(browser, live_server, username: str, width: int = 1200):
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = console_errors(page)
    sign_in(page, live_server.url, username)
    return context, page, errors


def test_the_model_in_this_clinic_renders_at_volume_with_no_console_error(live_server, chromium, staff):
    admin = MembershipFactory(
        user__username="boss", clinic=staff.membership.clinic, role=Membership.Role.CLINIC_ADMIN
    ).user
    seed_clinic(staff.membership.clinic, staff, patients=600)
    context, page, errors = open_page(chromium, live_server, "boss")

    page.get_by_role("link", name="The model here").click()
    page.wait_for_url(live_server.url + reverse("clinic-model", args=[admin.membership.clinic_id]))
    page.locator("#reliability circle.point").first.wait_for()
    page.wait_for_load_state("networkidle")
    shot(page, "clinic-model")

    assert errors == []
    assert page.locator(STYLED).count() == 0
    assert page.locator("#drift-warning").count() == 0
    assert page.locator("#rates tbody tr").count() == 7
    first_rate = page.locator("#rate-urgent_sensitivity td").first.inner_text()
    assert " of " in first_rate and "95% interval" in first_rate
    assert page.locator("#confusion-matrix tbody tr").count() == 7
    points = page.locator("#reliability circle.point")
    assert points.count() >= 5
    box = page.locator("#reliability").bounding_box()
    assert box["width"] > 200 and box["height"] > 200  # drawn, at its size
    context.close()


def test_staff_record_and_correct_a_confirmed_diagnosis_in_the_browser(live_server, chromium, staff, case):
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)), report=True)
    context, page, errors = open_page(chromium, live_server, "staff", width=1024)
    page.goto(live_server.url + reverse("analysis-detail", args=[analysis.pk]))

    form = page.locator("#outcome-form")
    form.get_by_label("Diagnosis", exact=True).select_option("mel")
    form.get_by_label("Confirmed by").select_option("histo")
    form.get_by_role("button", name="Record the diagnosis").click()
    page.locator("#confirmed-diagnosis").wait_for()
    assert "Melanoma" in page.locator("#confirmed-diagnosis").inner_text()

    assert errors == []
    page.locator("#outcome-form-box summary").click()
    form.get_by_label("Diagnosis", exact=True).select_option("other")
    form.get_by_label("Confirmed by").select_option("consensus")
    form.get_by_role("button", name="Record the correction").click()
    page.locator("#outcome-form .errors").first.wait_for()  # "other" needs its words
    assert "Say what the diagnosis was" in page.locator("#outcome-form").inner_text()
    assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    errors.clear()
    form.get_by_label("Other diagnosis").fill("Invasive squamous cell carcinoma")
    form.get_by_role("button", name="Record the correction").click()
    page.locator("#outcome-history").wait_for()
    shot(page, "analysis-confirmed")

    assert errors == []
    assert page.locator(STYLED).count() == 0
    assert "Invasive squamous cell carcinoma" in page.locator("#confirmed-diagnosis").inner_text()
    assert list(Outcome.objects.order_by("recorded_at").values_list("diagnosis", flat=True)) == ["mel", "other"]
    context.close()
