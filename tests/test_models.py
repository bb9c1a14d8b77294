import hashlib
from datetime import date, timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from analysis.classes import CLASS_CODES, CLASS_NAMES, MALIGNANT, is_malignant
from analysis.models import Analysis, Case, LesionImage, Patient
from tests.factories import (
    AnalysisFactory,
    CaseFactory,
    ClinicFactory,
    LesionImageFactory,
    PatientFactory,
    jpeg_upload,
)

pytestmark = pytest.mark.django_db


def probabilities(**overrides: float) -> dict[str, float]:
    rest = (1.0 - sum(overrides.values())) / (len(CLASS_CODES) - len(overrides))
    return {code: overrides.get(code, rest) for code in CLASS_CODES}


def test_mrn_is_unique_within_a_clinic():
    patient = PatientFactory(mrn="A-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        PatientFactory(clinic=patient.clinic, mrn="A-1")
    assert Patient.objects.filter(mrn="A-1").count() == 1


def test_the_database_takes_an_mrn_in_another_case_for_the_same_one():
    patient = PatientFactory(mrn="abc-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        PatientFactory(clinic=patient.clinic, mrn="ABC-1")
    assert Patient.mrn_taken(patient.clinic, "Abc-1") and not Patient.mrn_taken(patient.clinic, "Abc-1", patient.pk)
    assert not Patient.mrn_taken(ClinicFactory(), "abc-1")


def test_two_clinics_may_use_the_same_mrn():
    PatientFactory(mrn="A-1")
    PatientFactory(mrn="A-1", clinic=ClinicFactory())
    assert Patient.objects.filter(mrn="A-1").count() == 2


@pytest.mark.parametrize("target", ["patient", "case", "image"])
def test_deleting_a_record_that_has_analyses_is_refused(target):
    analysis = AnalysisFactory()
    rows = {
        "image": analysis.image,
        "case": analysis.image.case,
        "patient": analysis.image.case.patient,
    }
    with pytest.raises(ProtectedError):
        rows[target].delete()
    assert Patient.objects.count() == Case.objects.count() == 1
    assert LesionImage.objects.count() == Analysis.objects.count() == 1


def test_history_lists_cases_images_and_analyses_oldest_first(patient):
    today = date.today()
    later_case = CaseFactory(patient=patient, opened_on=today)
    first_case = CaseFactory(patient=patient, opened_on=today - timedelta(days=30))
    first_image = LesionImageFactory(case=first_case)
    second_image = LesionImageFactory(case=first_case)
    first_run = AnalysisFactory(image=first_image)
    second_run = AnalysisFactory(image=first_image)
    CaseFactory()  # another patient's case stays out

    history = list(patient.history())

    assert history == [first_case, later_case]
    assert list(history[0].images.all()) == [first_image, second_image]
    assert list(history[0].images.all()[0].analyses.all()) == [first_run, second_run]
    assert list(history[1].images.all()) == []


@pytest.mark.parametrize("cases", [1, 5])
def test_history_takes_three_queries_whatever_its_size(patient, cases, django_assert_num_queries):
    for _ in range(cases):
        for image in LesionImageFactory.create_batch(2, case=CaseFactory(patient=patient)):
            AnalysisFactory.create_batch(2, image=image)

    with django_assert_num_queries(3):
        seen = [
            (case.clinician, image.uploaded_by, analysis.status)
            for case in patient.history()
            for image in case.images.all()
            for analysis in image.analyses.all()
        ]
    assert len(seen) == cases * 4


def test_image_is_stored_under_a_generated_name_and_keeps_the_original_one(staff):
    upload = jpeg_upload("Jane Doe back mole.JPG")
    expected_sha256 = hashlib.sha256(upload.read()).hexdigest()
    upload.seek(0)

    image = LesionImage(case=CaseFactory(), uploaded_by=staff)
    image.attach(upload)
    image.save()

    image = LesionImage.objects.get(pk=image.pk)
    assert "Jane" not in image.image.name
    assert image.image.name.startswith("lesions/") and image.image.name.endswith(".jpg")
    assert image.original_filename == "Jane Doe back mole.JPG"
    assert image.sha256 == expected_sha256
    assert (image.width, image.height) == (64, 48)


def test_only_the_first_claim_of_an_analysis_wins():
    analysis = AnalysisFactory()

    assert Analysis.claim(analysis.pk) is True
    assert Analysis.claim(analysis.pk) is False

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.RUNNING
    assert analysis.started_at is not None
    assert analysis.attempts == 1


def test_finish_stores_the_prediction_and_what_follows_from_it():
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()

    analysis.finish(probabilities(mel=0.7), model_version="mnv2-test-1")

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.DONE
    assert analysis.predicted_class == "mel"
    assert analysis.confidence == pytest.approx(0.7)
    assert analysis.malignant is True
    assert analysis.probabilities == pytest.approx(probabilities(mel=0.7))
    assert analysis.model_version == "mnv2-test-1"
    assert analysis.finished_at >= analysis.started_at


def test_a_benign_prediction_is_not_malignant():
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()

    analysis.finish(probabilities(nv=0.9), model_version="v")

    analysis.refresh_from_db()
    assert (analysis.predicted_class, analysis.malignant) == ("nv", False)


@pytest.mark.parametrize(
    "bad",
    [
        {"mel": 1.0},
        {**probabilities(), "extra": 0.0},
        {**probabilities(mel=0.5), "nv": 0.9},
    ],
    ids=["missing classes", "unknown class", "does not sum to 1"],
)
def test_finish_refuses_incomplete_probabilities(bad):
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()

    with pytest.raises(ValueError):
        analysis.finish(bad, model_version="v")

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.RUNNING


def test_an_unclaimed_analysis_cannot_finish():
    analysis = AnalysisFactory()

    with pytest.raises(Analysis.InvalidTransition):
        analysis.finish(probabilities(), model_version="v")

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.QUEUED


def test_fail_stores_the_reason():
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()

    analysis.fail("image could not be decoded")

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.FAILED
    assert analysis.error == "image could not be decoded"
    assert analysis.finished_at is not None


def test_a_failed_analysis_can_be_requeued_and_claimed_again():
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()
    analysis.fail("worker lost")

    analysis.requeue()

    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.QUEUED
    assert analysis.started_at is None and analysis.finished_at is None
    assert Analysis.claim(analysis.pk) is True
    analysis.refresh_from_db()
    assert analysis.attempts == 2
    assert analysis.error == ""


def test_a_finished_analysis_cannot_be_requeued():
    analysis = AnalysisFactory()
    Analysis.claim(analysis.pk)
    analysis.refresh_from_db()
    analysis.finish(probabilities(), model_version="v")

    with pytest.raises(Analysis.InvalidTransition):
        analysis.requeue()
    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.DONE


def test_class_vocabulary_names_all_seven_and_three_are_malignant():
    assert set(CLASS_NAMES) == set(CLASS_CODES) and len(CLASS_CODES) == 7
    assert MALIGNANT == {"mel", "bcc", "akiec"}
    assert CLASS_NAMES["mel"] == "Melanoma"
    assert is_malignant("bcc") and not is_malignant("bkl")
    with pytest.raises(ValueError):
        is_malignant("xyz")
