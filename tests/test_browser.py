"""End to end in a real browser (Debian's Chromium, driven by Playwright) against the running stack: the live
Django server, a real Celery worker process with the shipped model, and Redis.

Screenshots of the main pages go to artifacts/ (git ignores it).
"""

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from django.db import connections
from django.urls import reverse
from fhir.resources.bundle import Bundle
from PIL import Image, ImageDraw

from analysis.models import Analysis, Case, Patient
from ml.serve.paths import SHIPPED_MODEL
from workers.process import Worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PASSWORD = "correct horse battery staple"  # tests/factories.py

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium) for the browser test"
    ),
    pytest.mark.skipif(
        not SHIPPED_MODEL.with_suffix(".json").exists(),
        reason=f"no shipped model at {SHIPPED_MODEL} (set SKINSITE_MODEL) for the worker to run",
    ),
]


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
        # While that loop runs, Django keeps this thread's database connections apart from its usual ones (asgiref's
        # thread-critical Local switches to context-variable storage), so closing the usual ones at teardown would
        # miss them and leave a session open on the test database: close them here, while the loop still runs.
        connections.close_all()


@pytest.fixture
def worker(redis_url, tmp_path):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with Worker(redis_url, tmp_path / "worker.log") as running:
        yield running


def lesion_jpeg(path: Path) -> Path:
    image = Image.new("RGB", (320, 240), (226, 178, 156))
    ImageDraw.Draw(image).ellipse((110, 70, 210, 165), fill=(95, 55, 42))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    path.write_bytes(buffer.getvalue())
    return path


def sign_in(page, base: str, username: str) -> None:
    page.goto(base + reverse("login"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.stack  # a real worker analyses the upload
def test_staff_follow_a_lesion_from_upload_to_report_and_an_outsider_sees_none_of_it(
    live_server, browser, worker, staff, outsider, tmp_path
):
    started = time.monotonic()
    base = live_server.url
    context = browser.new_context(viewport={"width": 1024, "height": 768}, accept_downloads=True)  # a tablet
    page = context.new_page()
    page.set_default_timeout(20_000)

    sign_in(page, base, "staff")
    shot(page, "dashboard-empty")

    # A new patient
    page.get_by_role("link", name="Patients", exact=True).click()
    page.get_by_role("link", name="New patient").click()
    page.get_by_label("Name", exact=True).fill("Erika Mustermann")
    page.get_by_label("Medical record number").fill("E2E-0001")
    page.get_by_label("Date of birth").fill("1968-05-17")
    page.get_by_label("Sex").select_option("female")
    page.get_by_role("button", name="Save").click()
    page.get_by_role("heading", name="Erika Mustermann").wait_for()
    patient = Patient.objects.get(mrn="E2E-0001")
    assert patient.clinic == staff.membership.clinic

    # A case on her back
    page.get_by_text("Open a new case").click()
    page.get_by_label("Body site").select_option("back")
    page.get_by_label("Clinical notes").fill("Pigmented lesion, grew over the last 6 months.")
    page.get_by_role("button", name="Open case").click()
    case = Case.objects.get(patient=patient)
    page.wait_for_url(base + reverse("case-detail", args=[case.pk]))

    # A file that is not an image is refused next to the field, and nothing is stored
    (tmp_path / "notes.jpg").write_bytes(b"this is not a picture")
    page.get_by_label("Lesion images").set_input_files(str(tmp_path / "notes.jpg"))
    page.get_by_role("button", name="Upload and analyse").click()
    error = page.locator(".field.invalid .errors")
    error.wait_for()
    assert "notes.jpg: The file could not be read as a JPG or PNG image" in error.inner_text()
    assert not Analysis.objects.filter(image__case=case).exists()
    page.set_viewport_size({"width": 768, "height": 1024})  # a tablet held upright
    shot(page, "case-upload-refused")
    page.set_viewport_size({"width": 1024, "height": 768})

    # An image: the page waits for its result by itself
    page.get_by_label("Lesion images").set_input_files(str(lesion_jpeg(tmp_path / "lesion.jpg")))
    page.get_by_role("button", name="Upload and analyse").click()
    analysis = Analysis.objects.get(image__case=case)
    analysis_url = base + reverse("analysis-detail", args=[analysis.pk])
    page.wait_for_url(analysis_url)
    assert page.get_by_role("note").first.inner_text().startswith("Medical disclaimer")
    try:
        # No reload by the test: the page's own script notices the finished analysis.
        page.locator("#predicted, #result .errors").first.wait_for(timeout=90_000)
    except playwright_api.TimeoutError:
        analysis.refresh_from_db()
        raise AssertionError(f"no result shown; analysis is {analysis.status}\n{worker.log_text()[-4000:]}") from None
    analysis.refresh_from_db()
    assert analysis.status == "done", analysis.error
    assert page.locator("#predicted").inner_text() == analysis.get_predicted_class_display()
    assert page.locator("table.bars tbody tr").count() == 7
    assert analysis.model_version in page.content()
    # The Grad-CAM heatmap beside the image, at the image's size, and the triage tier
    heatmap = page.locator("#heatmap img")
    heatmap.wait_for()
    page.wait_for_function("() => document.querySelector('#heatmap img').complete")
    assert heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [
        analysis.image.width,
        analysis.image.height,
    ]
    assert page.locator("#triage .badge").inner_text() == analysis.get_risk_tier_display()

    # The PDF report, once the worker has written it
    page.get_by_role("link", name="Download PDF report").wait_for(timeout=60_000)
    shot(page, "analysis")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download PDF report").click()
    assert Path(download.value.path()).read_bytes()[:5] == b"%PDF-"
    analysis.refresh_from_db()
    assert analysis.opened_by == staff
    # Its FHIR record, revealed with the report: a valid R4 Bundle of this analysis, the PDF inside it
    with page.expect_download() as download:
        page.get_by_role("link", name="Download FHIR record").click()
    assert download.value.suggested_filename.endswith(f"analysis-{analysis.pk}.fhir.json")
    bundle = json.loads(Path(download.value.path()).read_text())
    Bundle.parse_obj(bundle)
    [report] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["identifier"][0]["value"] == str(analysis.pk)
    with analysis.report.open("rb") as handle:
        assert base64.b64decode(report["presentedForm"][0]["data"]) == handle.read()

    # The patient's timeline and the past analyses, filtered
    page.goto(base + reverse("patient-detail", args=[patient.pk]))
    page.locator("figure.shot img").first.wait_for()
    # The element comes before its picture (loaded lazily, after the page): wait for the picture, as for the heatmap.
    page.wait_for_function("() => document.querySelector('figure.shot img').complete")
    assert page.locator("figure.shot img").first.evaluate("img => img.naturalWidth") == 320
    shot(page, "patient")
    page.get_by_role("link", name="Past analyses").click()
    page.get_by_label("Patient (name or MRN)").fill("E2E-0001")
    page.get_by_label("Most likely class").select_option(analysis.predicted_class)
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name=f"#{analysis.pk}").wait_for()
    assert page.locator("table.list tbody tr").count() == 1
    shot(page, "past-analyses")
    page.goto(base + "/")
    shot(page, "dashboard")

    # Staff of another clinic get 404 for each of these URLs
    page.get_by_role("button", name="Sign out").click()
    other = browser.new_context()
    outsider_page = other.new_page()
    sign_in(outsider_page, base, "outsider")
    for url in [
        reverse("patient-detail", args=[patient.pk]),
        reverse("case-detail", args=[case.pk]),
        reverse("analysis-detail", args=[analysis.pk]),
        reverse("analysis-status", args=[analysis.pk]),
        reverse("image-file", args=[analysis.image.pk]),
        reverse("analysis-report", args=[analysis.pk]),
        reverse("analysis-fhir", args=[analysis.pk]),
    ]:
        response = outsider_page.request.get(base + url)
        assert response.status == 404, url
    assert "Erika" not in outsider_page.goto(base + reverse("analysis-list")).text()
    context.close()
    other.close()
    print(f"browser end-to-end test took {time.monotonic() - started:.1f} s")
    assert os.path.exists(ARTIFACTS / "analysis.png")


def test_on_a_phone_the_tier_heads_the_result_above_the_fold_and_list_cells_keep_their_labels(
    live_server, browser, staff, patient
):
    from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, finish
    from tests.test_verdict import URGENT_BENIGN

    image = LesionImageFactory(case=CaseFactory(patient=patient, body_site="face"))
    analysis = finish(AnalysisFactory(image=image), URGENT_BENIGN, report=True)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    sign_in(page, live_server.url, "staff")

    page.goto(live_server.url + reverse("analysis-detail", args=[analysis.pk]))
    shot(page, "analysis-phone")
    triage = page.locator("#triage")
    box = triage.bounding_box()
    assert box["y"] + box["height"] <= 844, f"the tier ends {box['y'] + box['height']:.0f} px down"
    assert page.locator("#status").bounding_box()["y"] < box["y"]
    assert triage.locator(".badge").inner_text() == "Urgent"
    assert "although the single most likely class (Melanocytic nevus, 60.0%) is benign" in triage.inner_text()
    # The most likely class is detail: below the tier, in smaller type than the tier
    class_line = page.locator("#class-line")
    assert class_line.bounding_box()["y"] > box["y"]
    tier_size = triage.locator(".tier-line").evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
    assert class_line.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") < tier_size

    page.goto(live_server.url + reverse("analysis-list"))
    cells = page.locator("table.list tbody tr").first.locator("td")
    labels = [cells.nth(i).evaluate("td => getComputedStyle(td, '::before').content") for i in range(cells.count())]
    assert labels == [
        f'"{name}: "'
        for name in ["Analysis", "Patient", "Body site", "Status", "Triage", "Most likely class", "Submitted"]
    ]
    shot(page, "past-analyses-phone")
    context.close()


# Reported to the page's console: a Content-Security-Policy violation, with what was blocked and why.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} on ${e.documentURI}`);
});
"""


def blocked_on_purpose(page_name: str, console_line: str) -> bool:
    # Redoc's sidebar shows Redocly's logo from their CDN, with no option to leave it out; the policy blocks it
    # (the docs load nothing from elsewhere) and Redoc hides the image when it fails to load.
    return page_name == "API docs (Redoc)" and "https://cdn.redoc.ly/redoc/logo-mini.svg" in console_line


def test_every_main_page_passes_its_content_security_policy(live_server, browser, staff, patient):
    from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, encoded, finish

    case = CaseFactory(patient=patient, clinician=staff)
    heatmap = encoded(Image.new("RGB", (40, 30), "orange"), "PNG")
    done = finish(AnalysisFactory(image=LesionImageFactory(case=case)), report=True, heatmap_png=heatmap)
    base = live_server.url
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    sign_in(page, base, "staff")

    ours = {  # what each page shows once it is drawn
        "dashboard": (reverse("home"), "h1"),
        "patient list": (reverse("patient-list"), "h1"),
        "new patient": (reverse("patient-create"), "form"),
        "patient": (reverse("patient-detail", args=[patient.pk]), "h1"),
        "case and its upload form": (reverse("case-detail", args=[case.pk]), "input[type=file]"),
        "analysis with a done result": (reverse("analysis-detail", args=[done.pk]), "#heatmap img"),
        "past analyses": (reverse("analysis-list"), "table.list"),
        "change password": (reverse("password_change"), "form"),
        "API token": (reverse("api-token"), "#api-token"),
    }
    theirs = {  # pages of libraries, each with its own scoped exception
        "API docs (Swagger UI)": (reverse("api:docs"), ".opblock"),
        "API docs (Redoc)": (reverse("api:redoc"), "h1"),
        "browsable API": (reverse("api:patient-list"), ".response-info"),
    }
    for name, (url, drawn) in (ours | theirs).items():
        console.clear()
        response = page.goto(base + url)
        assert response.status == 200, name
        policy = dict(
            (directive.split() + [""])[:2] for directive in response.headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == policy["script-src"] == "'self'", (name, policy)
        page.locator(drawn).first.wait_for()
        page.wait_for_load_state("networkidle")
        errors = [line for line in console if line.startswith("error") and not blocked_on_purpose(name, line)]
        assert errors == [], name
        if name in ours:
            assert page.locator("[style]").count() == 0, name
            assert policy["style-src"] == "'self'", (name, policy)

    # The probability bars are SVG, their widths attributes: melanoma's (81%) is drawn at 81% of its cell.
    page.goto(base + reverse("analysis-detail", args=[done.pk]))
    bar, cell = page.locator("table.bars rect").first, page.locator("table.bars svg").first
    assert bar.get_attribute("width") == "81.0%"
    assert bar.bounding_box()["width"] / cell.bounding_box()["width"] == pytest.approx(0.81, abs=0.01)
    context.close()
