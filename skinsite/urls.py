from django.contrib import admin
from django.urls import include, path

from analysis import views

urlpatterns = [
    path("", views.home, name="home"),
    path("analyses/<int:pk>/report.pdf", views.analysis_report, name="analysis-report"),
    path("api/", include("analysis.api_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
