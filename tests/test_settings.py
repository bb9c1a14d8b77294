"""Start-up with bad configuration fails at once and says which variable is wrong; production settings are
private by default."""

import json
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
        ("AXES_FAILURE_LIMIT", "five"),
        ("AXES_FAILURE_LIMIT", "0"),
        ("AXES_COOLOFF_MINUTES", "0"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        # Patient images inside a folder WhiteNoise serves would be public.
        ("MEDIA_ROOT", str(ROOT / "static" / "media")),
        ("MEDIA_ROOT", str(ROOT / "var")),
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


def settings_as_seen_by(**env: str) -> dict:
    """The security-relevant settings a process started with this environment ends up with."""
    names = [
        "DEBUG",
        "SESSION_COOKIE_SECURE",
        "SESSION_COOKIE_HTTPONLY",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_CONTENT_TYPE_NOSNIFF",
        "SECURE_REFERRER_POLICY",
        "X_FRAME_OPTIONS",
        "AXES_FAILURE_LIMIT",
        "AXES_LOCKOUT_PARAMETERS",
        "TRUSTED_PROXY_COUNT",
    ]
    code = (
        "import json, django; django.setup(); from django.conf import settings;"
        f"d = {{n: getattr(settings, n) for n in {names!r}}};"
        "d['AXES_COOLOFF_MINUTES'] = settings.AXES_COOLOFF_TIME.total_seconds() / 60;"
        "d['MIDDLEWARE'] = settings.MIDDLEWARE; d['AUTHENTICATION_BACKENDS'] = settings.AUTHENTICATION_BACKENDS;"
        "print(json.dumps(d))"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "skinsite.settings", **env}
    for name in ["AXES_FAILURE_LIMIT", "AXES_COOLOFF_MINUTES", "TRUSTED_PROXY_COUNT"]:
        if name not in env:
            environment.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_cookies_are_secure_and_browsers_are_told_to_be_strict():
    production = settings_as_seen_by(**PRODUCTION)

    assert production["DEBUG"] is False
    assert production["SESSION_COOKIE_SECURE"] and production["CSRF_COOKIE_SECURE"]
    assert production["SESSION_COOKIE_HTTPONLY"]
    assert production["SECURE_SSL_REDIRECT"]
    assert production["SECURE_HSTS_SECONDS"] >= 31536000 and production["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert production["SECURE_CONTENT_TYPE_NOSNIFF"]
    assert production["X_FRAME_OPTIONS"] == "DENY"
    assert production["SECURE_REFERRER_POLICY"] == "same-origin"
    assert "django.middleware.csrf.CsrfViewMiddleware" in production["MIDDLEWARE"]
    assert "django.middleware.security.SecurityMiddleware" in production["MIDDLEWARE"]


def test_sign_ins_are_throttled_by_username_and_address_5_failures_15_minutes_by_default():
    production = settings_as_seen_by(**PRODUCTION)

    assert production["AUTHENTICATION_BACKENDS"][0] == "axes.backends.AxesStandaloneBackend"
    assert "axes.middleware.AxesMiddleware" in production["MIDDLEWARE"]
    assert production["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
    assert (production["AXES_FAILURE_LIMIT"], production["AXES_COOLOFF_MINUTES"]) == (5, 15)
    assert production["TRUSTED_PROXY_COUNT"] == 0  # X-Forwarded-For ignored unless a proxy is declared


def test_the_throttle_limit_and_cool_off_come_from_the_environment():
    configured = settings_as_seen_by(**PRODUCTION, AXES_FAILURE_LIMIT="3", AXES_COOLOFF_MINUTES="60")

    assert (configured["AXES_FAILURE_LIMIT"], configured["AXES_COOLOFF_MINUTES"]) == (3, 60)


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
