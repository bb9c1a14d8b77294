import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from analysis.access import clinic_for, for_clinic, get_for_clinic
from analysis.models import Analysis, Patient
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_staff_and_colleague_reach_their_clinics_patient(staff, colleague, patient):
    assert get_for_clinic(staff, Patient, pk=patient.pk) == patient
    assert get_for_clinic(colleague, Patient, pk=patient.pk) == patient


def test_outsider_gets_404_for_other_clinics_patient(outsider, patient):
    with pytest.raises(Http404):
        get_for_clinic(outsider, Patient, pk=patient.pk)


def test_outsider_gets_404_for_other_clinics_analysis(staff, outsider, patient):
    analysis = AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient)))

    assert get_for_clinic(staff, Analysis, pk=analysis.pk) == analysis
    with pytest.raises(Http404):
        get_for_clinic(outsider, Analysis.objects.select_related("image"), pk=analysis.pk)


def test_lists_hold_only_the_users_clinic(staff, outsider, patient):
    assert list(for_clinic(staff, Patient)) == [patient]
    assert list(for_clinic(outsider, Patient)) == []


def test_users_without_a_clinic_see_nothing(patient):
    loner = UserFactory(is_superuser=True)
    assert clinic_for(loner) is None
    assert clinic_for(AnonymousUser()) is None
    assert list(for_clinic(loner, Patient)) == []


def test_a_deactivated_user_has_no_clinic(staff, patient):
    staff.is_active = False
    assert clinic_for(staff) is None
    assert list(for_clinic(staff, Patient)) == []
