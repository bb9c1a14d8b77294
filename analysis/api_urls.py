"""The API's routes, included at /api/ (see skinsite/urls.py)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from analysis import api

app_name = "api"

router = DefaultRouter()
router.register("patients", api.PatientViewSet, basename="patient")
router.register("cases", api.CaseViewSet, basename="case")
router.register("images", api.LesionImageViewSet, basename="image")
router.register("analyses", api.AnalysisViewSet, basename="analysis")
router.register("audit", api.AuditEventViewSet, basename="audit-event")

urlpatterns = [
    path("auth/token/", api.ObtainTokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    *router.urls,
]
