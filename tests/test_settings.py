"""Start-up with bad configuration fails at once and says which variable is wrong."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "a-long-random-production-secret-key-0123456789-abcdefghijklmnop",
    "ALLOWED_HOSTS": "skinsite.example.org",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "skinsite.settings", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DATABASE_URL", "nosuchdb://somewhere/db"),
        ("DATABASE_URL", "postgres://127.0.0.1:5432"),
        ("REDIS_URL", "http://127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("DEBUG", "maybe"),
        ("WORKER_CONCURRENCY", "two"),
        ("TIME_ZONE", "Mars/Olympus_Mons"),
    ],
)
def test_a_bad_value_stops_start_up_and_names_the_variable(variable, value):
    result = manage("check", **{variable: value})

    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line and variable in last_line


def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", **{**PRODUCTION, "SECRET_KEY": ""})

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG=0" in result.stderr


def test_production_settings_pass_the_deployment_checks():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)

    assert result.returncode == 0, result.stderr


def test_the_web_process_never_imports_tensorflow():
    code = (
        "import sys, django; django.setup();"
        "import skinsite.urls, skinsite.wsgi, workers.tasks, analysis.admin, analysis.views, analysis.reports;"
        "from django.test import Client; Client().get('/accounts/login/');"
        "sys.exit('tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "skinsite.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
