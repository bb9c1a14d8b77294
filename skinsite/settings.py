"""skinsite settings, all read from the environment.

The defaults run on a laptop with nothing installed but Python: a SQLite file and the embedded Redis that
`make run` starts. DATABASE_URL and REDIS_URL switch to real servers. A bad value stops start-up here,
naming the variable, rather than failing later in a request or a task.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from ml.serve.paths import SHIPPED_MODEL

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=0")
    # Development only; `check --deploy` flags it, and DEBUG=0 refuses to start without a real one.
    SECRET_KEY = "django-insecure-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "skinsite.apps.PlatformAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from our static files: the docs work offline
    "axes",
    "csp",
    "analysis",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "analysis.middleware.clinic_time_zone",
    "analysis.middleware.private_answers",
    "analysis.middleware.other_clinics_records_audited",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "analysis.middleware.database_unavailable",
    # Last, so that it turns a sign-in refused for too many failures into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "skinsite.urls"
WSGI_APPLICATION = "skinsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Local state (SQLite file, embedded Redis dump, media) lives in var/, which git ignores.
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'skinsite.sqlite3'}"
try:
    # Health checks: a kept connection that died (the server restarted) is replaced, not used and failed.
    _database = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0), conn_health_checks=True)
except ValueError as e:
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL ({e}): {DATABASE_URL!r}") from None
if not _database.get("NAME"):
    raise ImproperlyConfigured(f"DATABASE_URL names no database: {DATABASE_URL!r}")
if _database["ENGINE"] == "django.db.backends.sqlite3" and _database["NAME"] != ":memory:":
    Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web, workers and sweeper write at once: wait for the lock rather than fail, and let readers
    # read while one writes.
    _database["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    # A test database in a file, not in memory, so the worker processes of the queue tests share it.
    _database["TEST"] = {"NAME": str(Path(_database["NAME"]).with_name("test-" + Path(_database["NAME"]).name))}
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6380/0"
_redis = urlsplit(REDIS_URL)
if _redis.scheme not in ("redis", "rediss") or not _redis.hostname:
    raise ImproperlyConfigured(f"REDIS_URL must look like redis://host:port/db, got {REDIS_URL!r}")
try:
    _redis.port  # noqa: B018 -- urlsplit only validates the port when it is read
except ValueError:
    raise ImproperlyConfigured(f"REDIS_URL has a bad port: {REDIS_URL!r}") from None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Axes first: it refuses a locked-out username+address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
try:
    ZoneInfo(TIME_ZONE)
except (ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE is not a known time zone: {TIME_ZONE!r}") from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]

# Patient images and reports: a private folder, never served by URL. Views that show them check the
# clinic first and stream the file themselves.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/private-media/"


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


for _static in [STATIC_ROOT, *STATICFILES_DIRS]:
    if _overlaps(MEDIA_ROOT, _static):
        # WhiteNoise would serve patient images to anyone who guessed a name.
        raise ImproperlyConfigured(f"MEDIA_ROOT ({MEDIA_ROOT}) must not overlap a static files folder ({_static})")


def s3_storage(bucket: str) -> dict:
    """The S3 backend of django-storages (boto3) for an S3-compatible store: AWS S3, MinIO, any other."""
    from botocore.config import Config

    endpoint = os.environ.get("S3_ENDPOINT_URL", "").strip() or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(f"S3_ENDPOINT_URL must look like https://host[:port], got {endpoint!r}")
    access_key = os.environ.get("S3_ACCESS_KEY_ID", "").strip() or None
    secret_key = os.environ.get("S3_SECRET_ACCESS_KEY", "").strip() or None
    if (access_key is None) != (secret_key is None):
        raise ImproperlyConfigured("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are set together, or neither")
    return {
        "BACKEND": "analysis.bucket.PrivateS3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint,
            "region_name": os.environ.get("S3_REGION", "").strip() or None,
            # Neither set: boto3's own chain (AWS_ACCESS_KEY_ID..., an instance or task role).
            "access_key": access_key,
            "secret_key": secret_key,
            # A private bucket: no ACL is sent, so the bucket's own (private) applies to every file. No URL into it
            # is ever made (PrivateS3Storage.url): clients get every file through the views that check the clinic.
            "default_acl": None,
            "querystring_auth": True,
            # As the local folder: a name already taken gets a new one rather than replacing a patient's file.
            "file_overwrite": False,
            # botocore's client settings (the backend's own addressing and signature options are read only
            # without these). MinIO and other self-hosted stores answer on one host name, not one per bucket;
            # fail in seconds when the store is away (a web request answers, a worker retries its task) rather
            # than after botocore's default minute.
            "client_config": Config(
                s3={"addressing_style": "path" if endpoint else "auto"},
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        },
    }


# Where images, heatmaps and reports are kept: MEDIA_ROOT on this machine, or, with S3_BUCKET set, a bucket of an
# S3-compatible object store that the web and every worker host reach over the network. Every read and write goes
# through Django's storage API (default_storage, FieldFile), so the code is the same for both.
S3_BUCKET = os.environ.get("S3_BUCKET", "").strip()
STORAGES = {
    "default": s3_storage(S3_BUCKET) if S3_BUCKET else {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads: at most MAX_UPLOAD_MB per image; images must decode as JPG/PNG within these bounds.
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_MB", 10) * 1024 * 1024
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 40_000_000)
MIN_IMAGE_SIDE = env_int("MIN_IMAGE_SIDE", 64)

# Non-file form fields and JSON bodies: Django's default of 2.5 MB, named here because the API relies on
# it (analysis/api.py answers a bigger body with 413 JSON). Image files are bounded by MAX_UPLOAD_BYTES.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440)

# REST API (analysis/api.py): token or session, clinic staff only, every list paginated.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "analysis.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "analysis.permissions.IsClinicMember",
    ],
    # DRF's two; the HTML one with the inline styles its templates need (see the class).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "analysis.renderers.BrowsableAPIRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "analysis.api.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "skinsite API",
    "DESCRIPTION": "Patients, cases, lesion image submission, analysis results and PDF reports of your clinic.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "CaseStatusEnum": "analysis.models.Case.Status",
        "AnalysisStatusEnum": "analysis.models.Analysis.Status",
    },
}

# Production hardening; every one defaults on when DEBUG=0 so `check --deploy` passes.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 60 * 60)
# Django's defaults, named here because the access tests rely on them: no script reads the session cookie,
# no page is framed, no browser guesses a content type, no other site learns our URLs (they hold ids).
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp) on every page: scripts, styles, images and fonts from our own static
# files and views only, no inline script or style, no plugins, no framing, forms post back to us. The API docs
# and the browsable API widen it for their own views only (analysis/api_urls.py, analysis/api.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    # Only behind a TLS-terminating proxy that sets this header itself.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# How many reverse proxies stand in front of the web process, each appending to X-Forwarded-For. 0 (the
# default) ignores the header, which a client could otherwise forge; the client's address is REMOTE_ADDR.
# Read by analysis.audit.client_ip for the audit trail and for login throttling.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be 0 or more, got {TRUSTED_PROXY_COUNT}")

# Login throttling (django-axes), for the sign-in form, the admin's and the API token endpoint alike.
# Failures count per username *and* address together: an attacker guessing one account is stopped, but
# cannot lock a whole clinic out by failing from its shared address, nor lock one user out from elsewhere.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME <= timedelta(0):
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT and AXES_COOLOFF_MINUTES must be at least 1")
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a successful sign-in forgets that user's earlier typos
AXES_LOCKOUT_CALLABLE = "analysis.views.locked_out"
AXES_HTTP_RESPONSE_CODE = 429
AXES_CLIENT_IP_CALLABLE = "analysis.audit.client_ip"
AXES_VERBOSE = False
# Sign-ins are in our audit trail; axes's own log of them would also open a session for every API token request.
AXES_DISABLE_ACCESS_LOG = True

# Celery (namespace CELERY_, read by workers/celery.py). Our own Analysis table holds the status of the
# work, so there is no result backend.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 1)
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("WORKER_MAX_TASKS_PER_CHILD", 200)
CELERY_TASK_TIME_LIMIT = env_int("TASK_TIME_LIMIT", 300)
CELERY_TASK_SOFT_TIME_LIMIT = int(CELERY_TASK_TIME_LIMIT * 0.9)
_visibility_timeout = env_int("BROKER_VISIBILITY_TIMEOUT", 3600)
if _visibility_timeout <= CELERY_TASK_TIME_LIMIT:
    # Otherwise Redis hands a still-running task to a second worker.
    raise ImproperlyConfigured(
        f"BROKER_VISIBILITY_TIMEOUT ({_visibility_timeout}) must exceed TASK_TIME_LIMIT ({CELERY_TASK_TIME_LIMIT})"
    )
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _visibility_timeout,
    # Sending gives up within about a second when Redis is away: the upload is answered at once and the
    # sweeper sends the analysis later (workers/sweeper.py).
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
    "socket_connect_timeout": 2,
}
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Each pool process loads the LiteRT classifier and the Keras model for Grad-CAM at start-up (importing
# TensorFlow takes several seconds on a small machine): give it longer than Celery's default 4 s.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = env_int("WORKER_PROC_ALIVE_TIMEOUT", 120)
# With the Redis broker 0 is the highest priority and 9 the lowest. Reports go last: a burst of uploads has
# every analysis run before the PDFs of those already done, instead of each result waiting behind them.
CELERY_TASK_ROUTES = {"workers.tasks.render_report": {"priority": 9}}
# Recovery (workers/sweeper.py): how often each worker looks for lost work, and how long an analysis may
# wait in the queue before it is sent again (the broker was down, or lost the message).
SWEEP_INTERVAL = env_int("SWEEP_INTERVAL", 30)
QUEUED_RESEND_AFTER = env_int("QUEUED_RESEND_AFTER", 120)
if QUEUED_RESEND_AFTER < 1:
    raise ImproperlyConfigured(f"QUEUED_RESEND_AFTER must be at least 1 second, got {QUEUED_RESEND_AFTER}")

# The dashboard lists urgent results older than this many days that have no confirmed diagnosis yet.
OUTCOME_OVERDUE_DAYS = env_int("OUTCOME_OVERDUE_DAYS", 30)
if OUTCOME_OVERDUE_DAYS < 1:
    raise ImproperlyConfigured(f"OUTCOME_OVERDUE_DAYS must be at least 1 day, got {OUTCOME_OVERDUE_DAYS}")

# The model the workers serve, and its model card (read by the PDF reports, never typed in).
SKINSITE_MODEL = SHIPPED_MODEL  # SKINSITE_MODEL in the environment, else ml/models/skinsite.tflite
MODEL_METRICS = SKINSITE_MODEL.parent / "metrics.json"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"client_errors_in_one_line": {"()": "skinsite.logs.ClientErrorsInOneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own console handler on "django" (DEBUG only) would write each of its records a second time,
        # after the root's: every record is written once, by the root's.
        "django": {"handlers": []},
        "django.request": {"filters": ["client_errors_in_one_line"]},
        # WeasyPrint's font subsetting logs every table it touches.
        "fontTools": {"level": "WARNING"},
        "weasyprint": {"level": "WARNING"},
    },
}
