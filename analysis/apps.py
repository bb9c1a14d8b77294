from django.apps import AppConfig


class AnalysisConfig(AppConfig):
    name = "analysis"
    verbose_name = "Clinics, patients and analyses"

    def ready(self) -> None:
        from analysis import audit, signals  # noqa: F401 -- connects the receivers
