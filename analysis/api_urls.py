"""The API's routes, included at /api/ (see skinsite/urls.py)."""

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from analysis import api

app_name = "api"

router = DefaultRouter()
router.register("patients", api.PatientViewSet, basename="patient")
router.register("cases", api.CaseViewSet, basename="case")
router.register("images", api.LesionImageViewSet, basename="image")
router.register("analyses", api.AnalysisViewSet, basename="analysis")
router.register("outcomes", api.OutcomeViewSet, basename="outcome")
router.register("clinics", api.ClinicViewSet, basename="clinic")
router.register("audit", api.AuditEventViewSet, basename="audit-event")

# The two API docs pages widen the site's Content-Security-Policy (skinsite/settings.py) for themselves only.
# Swagger UI's stylesheet draws its icons as data: images; its setup script comes from the split view's own URL
# (?script), not inline.
swagger_docs = csp_update({"img-src": ["data:"]})(SpectacularSwaggerSplitView.as_view(url_name="api:schema"))
# Redoc styles itself with <style> elements it writes (styled-components), draws icons as data: images and
# searches in a worker started from a blob: URL.
redoc_docs = csp_update({"style-src": [UNSAFE_INLINE], "img-src": ["data:"], "worker-src": [SELF, "blob:"]})(
    SpectacularRedocView.as_view(url_name="api:schema")
)

urlpatterns = [
    path("auth/token/", api.ObtainTokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", swagger_docs, name="docs"),
    path("redoc/", redoc_docs, name="redoc"),
    *router.urls,
]
