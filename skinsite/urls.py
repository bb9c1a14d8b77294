from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from analysis import views

urlpatterns = [
    path("", views.home, name="home"),
    path("patients/", views.patient_list, name="patient-list"),
    path("patients/new/", views.patient_create, name="patient-create"),
    path("patients/<int:pk>/", views.patient_detail, name="patient-detail"),
    path("patients/<int:pk>/edit/", views.patient_edit, name="patient-edit"),
    path("patients/<int:pk>/cases/new/", views.case_create, name="case-create"),
    path("cases/<int:pk>/", views.case_detail, name="case-detail"),
    path("cases/<int:pk>/close/", views.case_close, name="case-close"),
    path("cases/<int:pk>/reopen/", views.case_reopen, name="case-reopen"),
    path("cases/<int:pk>/images/", views.case_upload, name="case-upload"),
    path("images/<int:pk>/", views.image_file, name="image-file"),
    path("analyses/", views.analysis_list, name="analysis-list"),
    path("analyses/<int:pk>/", views.analysis_detail, name="analysis-detail"),
    path("analyses/<int:pk>/status.json", views.analysis_status, name="analysis-status"),
    path("analyses/<int:pk>/report.pdf", views.analysis_report, name="analysis-report"),
    path("analyses/<int:pk>/heatmap.png", views.analysis_heatmap, name="analysis-heatmap"),
    path("analyses/<int:pk>/fhir.json", views.analysis_fhir, name="analysis-fhir"),
    path("analyses/<int:pk>/outcomes/", views.analysis_outcome, name="analysis-outcome"),
    path("audit/", views.audit_log, name="audit-log"),
    path("clinics/<int:pk>/model/", views.clinic_model, name="clinic-model"),
    path("api/", include("analysis.api_urls")),
    # Before Django's own, which it replaces: the old password is checked through sign-in throttling.
    path("accounts/password_change/", views.PasswordChange.as_view(), name="password_change"),
    path("accounts/api-token/", views.api_token, name="api-token"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    # Browsers ask for it on pages that name no icon (the Django admin's).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg")), name="favicon"),
]

# A database that is away is a 503 to retry wherever it fails, middleware included (analysis/middleware.py).
handler500 = "analysis.middleware.server_error"
