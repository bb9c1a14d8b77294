"""The clinic pages' forms. Upload checks live here (through analysis/uploads.py), never in the views."""

from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.forms import PasswordChangeForm
from django.db.models import Q
from django.utils import timezone

from analysis.classes import CLASS_CODES, CLASS_NAMES
from analysis.models import MRN_TAKEN, Analysis, AuditEvent, Case, Outcome, Patient
from analysis.outcomes import WHICH_CLASS
from analysis.services import CLOSED_CASE
from analysis.uploads import UploadRejected, validate_image_file


class DateInput(forms.DateInput):
    input_type = "date"


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ["name", "mrn", "date_of_birth", "sex", "notes"]
        widgets = {"date_of_birth": DateInput(), "notes": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args, clinic, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.clinic = clinic

    def clean_mrn(self) -> str:
        # The clinic is not a form field, so the model's unique (clinic, mrn) constraint is checked here.
        mrn = self.cleaned_data["mrn"].strip()
        if Patient.mrn_taken(self.instance.clinic, mrn, other_than=self.instance.pk):
            raise forms.ValidationError(MRN_TAKEN)
        return mrn


class NewCaseForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["body_site", "opened_on", "clinical_notes"]
        widgets = {"opened_on": DateInput(), "clinical_notes": forms.Textarea(attrs={"rows": 3})}


class CaseNotesForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["body_site", "clinical_notes"]
        widgets = {"clinical_notes": forms.Textarea(attrs={"rows": 4})}


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class ImagesField(forms.FileField):
    """One or several image files. The form checks every one (it knows the case), and the messages name the file."""

    widget = MultipleFileInput

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/jpeg,image/png"}))
        super().__init__(**kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, list | tuple) else [data] if data else []
        if not files:
            raise forms.ValidationError("Choose at least one JPG or PNG image.", code="required")
        return list(files)


class UploadForm(forms.Form):
    images = ImagesField(
        label="Lesion images",
        help_text="JPG or PNG, at most 10 MB each, one still photo per file. Several images may be chosen at once.",
    )
    captured_at = forms.DateTimeField(
        label="Taken at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty if unknown.",
    )

    def __init__(self, *args, case: Case, **kwargs):
        super().__init__(*args, **kwargs)
        self.case = case

    def clean_captured_at(self):
        taken = self.cleaned_data["captured_at"]
        if taken is not None and taken > timezone.now():
            raise forms.ValidationError("The time taken cannot be in the future.", code="future")
        return taken

    def clean_images(self) -> list:
        files = self.cleaned_data["images"]
        errors = []
        seen: dict[str, str] = {}  # the same image chosen twice in this upload
        for upload in files:
            try:
                validate_image_file(upload, case=self.case, seen=seen)
            except UploadRejected as rejected:
                errors.append(forms.ValidationError(f"{upload.name}: {rejected}", code="invalid_image"))
        if errors:
            raise forms.ValidationError(errors)
        return files

    def clean(self):
        if not self.case.is_open:
            raise forms.ValidationError(CLOSED_CASE)
        return super().clean()


class OutcomeForm(forms.ModelForm):
    """A confirmed diagnosis of a done analysis, or a correction of the last one (Outcome.clean has the rules)."""

    class Meta:
        model = Outcome
        fields = ["diagnosis", "other_diagnosis", "method", "confirmed_on"]
        widgets = {"confirmed_on": DateInput()}
        help_texts = {
            "diagnosis": "The class as HAM10000 groups diagnoses: "
            + "; ".join(f"{CLASS_NAMES.get(code, 'Other')}: {words}" for code, words in WHICH_CLASS)
            + ".",
            "method": "As HAM10000 records it: histopathology (a biopsy or excision), follow-up (unchanged over "
            "time), expert consensus, or confocal microscopy.",
        }

    def __init__(self, *args, analysis: Analysis, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.analysis = analysis
        self.instance.recorded_by = user
        self.fields["diagnosis"].choices = [("", "Choose…"), *Outcome.DIAGNOSES]
        self.fields["method"].choices = [("", "Choose…"), *Outcome.Method.choices]
        if not self.is_bound:
            self.initial.setdefault("confirmed_on", timezone.localdate())


class ClinicModelForm(forms.Form):
    """The choices of "The model in this clinic": which analyses (by the day they were made) of which model
    version. A bad value is said next to its field and that choice falls back to its default."""

    ALL_VERSIONS = "all"

    model_version = forms.ChoiceField(label="Model version", required=False)
    date_from = forms.DateField(label="Analysed from", required=False, widget=DateInput())
    date_to = forms.DateField(label="To", required=False, widget=DateInput())

    def __init__(self, *args, versions: list[str], default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default
        self.fields["model_version"].choices = [(v, v) for v in versions] + [
            (self.ALL_VERSIONS, "All versions (no model card to compare with)")
        ]
        self.fields["model_version"].initial = default

    def clean(self):
        data = super().clean()
        first, last = data.get("date_from"), data.get("date_to")
        if first and last and last < first:
            self.add_error("date_to", reversed_days("Analysed from", "To"))
        return data

    def choices(self) -> tuple[str | None, date | None, date | None]:
        """(model version, None for all; first day; last day), each bad value left at its default."""
        data = {}
        if self.is_bound:
            self.is_valid()  # cleans each field; a field with an error is absent from cleaned_data
            data = self.cleaned_data
        version = data.get("model_version") or self.default
        first = None if "date_to" in self.errors else data.get("date_from")
        return (None if version == self.ALL_VERSIONS else version), first, data.get("date_to")


class AnalysisFilterForm(forms.Form):
    """The filters of the past analyses list; every field is optional. A bad value is said next to its field and
    only that filter is left out: the others still apply, as the form shows them."""

    date_from = forms.DateField(label="From", required=False, widget=DateInput())
    date_to = forms.DateField(label="To", required=False, widget=DateInput())
    predicted_class = forms.ChoiceField(
        label="Most likely class",
        required=False,
        choices=[("", "Any")] + [(code, CLASS_NAMES[code]) for code in CLASS_CODES],
    )
    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Any")] + Analysis.Status.choices)
    risk_tier = forms.ChoiceField(label="Triage", required=False, choices=[("", "Any")] + Analysis.RiskTier.choices)
    malignant = forms.BooleanField(
        label="Suspicious for malignancy",
        required=False,
        help_text="The malignant classes together reach the urgent threshold, whatever the most likely class.",
    )
    flagged = forms.BooleanField(label="Flagged images only", required=False)
    patient = forms.CharField(
        label="Patient (name or MRN)", required=False, max_length=200, help_text="Any part of a name or an MRN."
    )

    def clean(self):
        data = super().clean()
        first, last = data.get("date_from"), data.get("date_to")
        if first and last and last < first:
            self.add_error("date_to", reversed_days("From", "To"))
        return data

    def filter(self, qs):
        if not self.is_bound:
            return qs
        self.is_valid()  # cleans each field; a field with an error is absent from cleaned_data
        data = self.cleaned_data
        if "date_to" in self.errors:  # before "from": no range to filter by, and the message says so
            data.pop("date_from", None)
        qs = within_days(qs, "created_at", data.get("date_from"), data.get("date_to"))
        if data.get("predicted_class"):
            qs = qs.filter(predicted_class=data["predicted_class"])
        if data.get("status"):
            qs = qs.filter(status=data["status"])
        if data.get("risk_tier"):
            qs = qs.filter(risk_tier=data["risk_tier"])
        if data.get("malignant"):
            qs = qs.filter(malignant=True)
        if data.get("flagged"):
            qs = qs.filter(status=Analysis.Status.DONE).exclude(quality_flags=[])
        if term := data.get("patient", "").strip():
            qs = qs.filter(Q(image__case__patient__name__icontains=term) | Q(image__case__patient__mrn__icontains=term))
        return qs


class AuditFilterForm(forms.Form):
    """The filters of the audit trail page; every field is optional and a bad value is ignored."""

    user = forms.ModelChoiceField(label="Who", required=False, queryset=get_user_model().objects.none())
    action = forms.ChoiceField(label="Action", required=False, choices=[("", "Any")] + AuditEvent.Action.choices)
    object_type = forms.ChoiceField(
        label="Record", required=False, choices=[("", "Any")] + AuditEvent.ObjectType.choices
    )
    patient = forms.IntegerField(label="Patient id", required=False, min_value=1, max_value=2**63 - 1)
    date_from = forms.DateField(label="From", required=False, widget=DateInput())
    date_to = forms.DateField(label="To", required=False, widget=DateInput())

    def __init__(self, *args, clinic, **kwargs):
        super().__init__(*args, **kwargs)
        # Only this clinic's people, past members included (their events stay on record).
        self.fields["user"].queryset = get_user_model().objects.filter(membership__clinic=clinic).order_by("username")

    def filter(self, qs):
        if not self.is_valid():
            return qs
        data = self.cleaned_data
        if data["user"]:
            qs = qs.filter(user=data["user"])
        if data["action"]:
            qs = qs.filter(action=data["action"])
        if data["object_type"]:
            qs = qs.filter(object_type=data["object_type"])
        if data["patient"]:
            qs = qs.filter(patient_id=data["patient"])
        return within_days(qs, "at", data["date_from"], data["date_to"])


def reversed_days(first: str, last: str) -> str:
    """What a range of days that ends before it starts is told, on the pages and in the API alike."""
    return f"“{last}” is before “{first}”: no day lies between them. Swap the dates."


class StrictBooleanField(forms.NullBooleanField):
    """true or false (or 1 or 0), or nothing; for an API filter, where Django's NullBooleanField would read any
    other word ("maybe") as no filter at all and answer every row without a word."""

    widget = forms.TextInput

    def to_python(self, value):
        if value in (None, ""):
            return None
        if str(value).lower() in ("true", "1"):
            return True
        if str(value).lower() in ("false", "0"):
            return False
        raise forms.ValidationError("Enter true or false.", code="invalid")


class DayRangeFilterForm(forms.Form):
    """The form of an API FilterSet with a range of days, `first` to `last`: a range that ends before it starts
    is a 400 that says so, as the past analyses page says it (an empty answer would read as "nothing found")."""

    first, last = "created_after", "created_before"

    def clean(self):
        data = super().clean()
        first, last = data.get(self.first), data.get(self.last)
        if first and last and last < first:
            self.add_error(self.last, reversed_days(self.first, self.last))
        return data


def within_days(qs, field: str, first: date | None, last: date | None):
    """Rows whose `field` falls on the days from `first` to `last` (both included, either may be open), whole
    days in the current time zone, as a range on the column itself so its index serves. A bound a datetime
    cannot hold (the first days of year 1 or the last of 9999, which a date picker offers) leaves that end
    open: every stored time lies inside it anyway."""
    start = _start_of(first) if first else None
    end = _start_of(last, days_after=1) if last else None
    if start:
        qs = qs.filter(**{f"{field}__gte": start})
    if end:
        qs = qs.filter(**{f"{field}__lt": end})
    return qs


def _start_of(day: date, days_after: int = 0) -> datetime | None:
    """The instant `days_after` days after midnight starting `day` in the current time zone, in UTC as the
    database compares it; None where that lies outside the datetimes Python can hold."""
    try:
        midnight = datetime.combine(day + timedelta(days=days_after), time.min)
        return timezone.make_aware(midnight).astimezone(UTC)
    except OverflowError:
        return None


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Django's password change, with the old password checked through authenticate(): django-axes counts a
    wrong one like a failed sign-in, so a stolen session cannot guess the password at leisure, and a locked-out
    username is refused here too."""

    def __init__(self, user, *args, request=None, **kwargs):
        self.request = request
        super().__init__(user, *args, **kwargs)

    def clean_old_password(self):
        old_password = self.cleaned_data["old_password"]
        checked = authenticate(self.request, username=self.user.get_username(), password=old_password)
        if checked is None or checked.pk != self.user.pk:
            raise forms.ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password
