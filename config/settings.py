"""Django settings. Every deployment-specific value comes from the environment via config.env.

Embedded default (no servers needed): SQLite, media on local disk, a filesystem Celery broker
and file result store under ``var/``. ``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to
PostgreSQL and Redis, and ``STORAGE_URL`` moves every kept file into S3-compatible object
storage, without code changes.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PLATFORM_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    configured = env_str("DJANGO_SECRET_KEY", "")
    if configured:
        # Django's own deployment check (security.W009) only warns; with DEBUG off a guessable
        # key signs sessions and password-reset links, so it stops the start-up instead.
        weak = len(configured) < 50 or len(set(configured)) < 5 or configured.startswith("django-insecure-")
        if weak and not DEBUG:
            raise ImproperlyConfigured(
                "DJANGO_SECRET_KEY is too weak: use at least 50 random characters "
                '(python -c "import secrets; print(secrets.token_urlsafe(50))").'
            )
        return configured
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off.")
    # A development key is generated once per checkout and kept out of git (var/ is ignored).
    key_file = VAR_DIR / "dev_secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's files served by the app itself: /api/v1/docs works offline (no CDN)
    "drf_spectacular_sidecar",
    "csp",
    "django_celery_beat",
    "core",
    "annotations",
    "training",
    "review",
    "interchange",
    "inference",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

_sqlite_default = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        env_url("DATABASE_URL", _sqlite_default, schemes={"sqlite", "postgres", "postgresql"}),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file (not in-memory) test database, so that a real Celery worker process started by the
    # integration tests sees the same data; WAL lets the worker read while the tests write.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_cache_url = env_str("CACHE_URL", "")
if _cache_url:
    if not _cache_url.startswith(("redis://", "rediss://")):
        raise ImproperlyConfigured(f"CACHE_URL={_cache_url!r} must be a redis:// URL.")
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}}
else:
    # Shared by every process of the embedded setup (web, worker), unlike the local-memory cache.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
FRONTEND_DIST = BASE_DIR / "frontend" / "dist"
STATICFILES_DIRS = [FRONTEND_DIST] if FRONTEND_DIST.is_dir() else []
# Every file the platform keeps (originals, display images, thumbnails, model artifacts, export
# downloads) goes through the default storage: local disk under MEDIA_ROOT (the embedded
# default), or an S3-compatible bucket when STORAGE_URL=s3://bucket/prefix. Workers keep only
# scratch and a model cache on their own disk, so they may run on other hosts.
STORAGE_URL = env_url("STORAGE_URL", "file:", schemes={"file", "s3"})
_storage = urlparse(STORAGE_URL)
if _storage.scheme == "s3":
    if not _storage.netloc:
        raise ImproperlyConfigured(f"STORAGE_URL={STORAGE_URL!r} names no bucket: s3://bucket[/prefix].")
    _key_id, _secret = env_str("STORAGE_ACCESS_KEY_ID", ""), env_str("STORAGE_SECRET_ACCESS_KEY", "")
    if bool(_key_id) != bool(_secret):
        raise ImproperlyConfigured("Set both STORAGE_ACCESS_KEY_ID and STORAGE_SECRET_ACCESS_KEY, or neither.")
    _endpoint = env_str("STORAGE_ENDPOINT_URL", "")
    if _endpoint:
        env_url("STORAGE_ENDPOINT_URL", "", schemes={"http", "https"})
    _default_storage: dict[str, Any] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": _storage.netloc,
            "location": _storage.path.strip("/"),
            "endpoint_url": _endpoint or None,
            "region_name": env_str("STORAGE_REGION", "us-east-1"),
            "access_key": _key_id or None,
            "secret_key": _secret or None,
            # The bucket is private: no ACL on objects (the bucket's own, private, applies) and
            # every URL it hands out is signed and short-lived.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": env_int("STORAGE_URL_EXPIRE_SECONDS", 300, minimum=10),
            "file_overwrite": False,
            "signature_version": "s3v4",
            # Most self-hosted S3 servers want path-style addressing (bucket in the path).
            "addressing_style": env_str("STORAGE_ADDRESSING_STYLE", "path" if _endpoint else "auto"),
            # Objects larger than this are spooled to a temporary file when read, not held in memory.
            "max_memory_size": 16 * 1024 * 1024,
        },
    }
else:
    if _storage.path not in ("", "/") or _storage.netloc:
        raise ImproperlyConfigured(
            f"STORAGE_URL={STORAGE_URL!r}: local disk is 'file:' (set MEDIA_ROOT for the folder)."
        )
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Media is private: there is deliberately no MEDIA_URL route; files are streamed by API views
# that check project membership.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media-not-served/"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# HSTS wherever cookies are secure (HTTPS only): browsers then refuse plain HTTP to this host.
# Sent on HTTPS responses; behind a TLS-terminating proxy set DJANGO_PROXY_SSL_HEADER.
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if SESSION_COOKIE_SECURE else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = False  # other hosts of the domain are not ours to force
if env_bool("DJANGO_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# A strict Content-Security-Policy (django-csp): the browser tool, the admin and Swagger UI load
# scripts and styles only from this origin, never inline; images may be data:/blob: URLs (the
# favicon, canvas snapshots); nothing may frame the pages.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 50 * 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024


def _throttle_rate(name: str, default: str) -> str:
    value = env_str(name, default)
    if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name}={value!r} must be a rate like 120/min (per s, min, hour or day).")
    return value


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotations.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    # JSON bodies only; the upload endpoints (images, models, COCO import) add multipart. A form
    # body elsewhere is a 415, never a half-parsed QueryDict of lists.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["core.api.throttling.AnonThrottle", "core.api.throttling.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": _throttle_rate("API_THROTTLE_ANON", "120/min"),
        # generous: autosave, thumbnails and tiles of one busy editor stay far below it
        "user": _throttle_rate("API_THROTTLE_USER", "3000/min"),
        # a slide viewer's tiles (core.api.throttling.TileThrottle)
        "tiles": _throttle_rate("API_THROTTLE_TILES", "60000/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cytology annotation platform API",
    "DESCRIPTION": "Projects, images, cell contours, proposals, verification, training and exports.",
    "VERSION": "1.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Platform limits (validated input sizes).
IMAGE_MAX_UPLOAD_BYTES = env_int("IMAGE_MAX_UPLOAD_BYTES", 64 * 1024 * 1024, minimum=1024)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 64_000_000, minimum=1)
IMAGE_MAX_FILES_PER_UPLOAD = env_int("IMAGE_MAX_FILES_PER_UPLOAD", 200, minimum=1)
# Large images and whole slides (annotations.services.slides): an image with a side above
# TILED_MIN_SIDE, or a pyramidal or scanner file, is stored as is and served as a tile pyramid a
# worker builds (queue ``default``); the web process reads only its header. SLIDE_SCRATCH_DIR is
# the worker's scratch for the pyramid before it is copied into the storage.
TILED_MIN_SIDE = env_int("TILED_MIN_SIDE", 4096, minimum=256)
SLIDE_MAX_UPLOAD_BYTES = env_int("SLIDE_MAX_UPLOAD_BYTES", 8 * 1024**3, minimum=1024)
SLIDE_MAX_PIXELS = env_int("SLIDE_MAX_PIXELS", 20_000_000_000, minimum=1)
SLIDE_TILE_SIZE = env_int("SLIDE_TILE_SIZE", 256, minimum=64)
SLIDE_SCRATCH_DIR = Path(env_str("SLIDE_SCRATCH_DIR", str(VAR_DIR / "slides")))
SLIDE_TASK_TIME_LIMIT = env_int("SLIDE_TASK_TIME_LIMIT", 6 * 3600, minimum=60)
CELL_MAX_VERTICES = env_int("CELL_MAX_VERTICES", 10_000, minimum=3)
CELL_MAX_PER_IMAGE = env_int("CELL_MAX_PER_IMAGE", 20_000, minimum=1)
# One login throttle for the API and the admin (core.login.ThrottledModelBackend).
AUTHENTICATION_BACKENDS = ["core.login.ThrottledModelBackend"]
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 300, minimum=1)
IDEMPOTENCY_TTL_HOURS = env_int("IDEMPOTENCY_TTL_HOURS", 24, minimum=1)

# Celery. Embedded default: kombu's filesystem transport and a file result store.
_broker_dir = VAR_DIR / "broker"
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL", "filesystem://", schemes={"filesystem", "redis", "rediss", "amqp", "memory"}
)
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # An unacknowledged message (acks_late) of a killed worker goes back to its queue after the
    # visibility timeout: the pre-segmentation task's hard time limit, so a killed one is run
    # again within minutes. Longer tasks (training, exports) may then be delivered twice while
    # they still run; their claim skips a duplicate (training.services.runner, interchange jobs).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int(
            "BROKER_VISIBILITY_TIMEOUT", env_int("GPU_TASK_TIME_LIMIT", 660, minimum=1) + 60, minimum=5
        ),
        # Look for such messages every BROKER_RESTORE_INTERVAL seconds (kombu's default scans only
        # every tenth 10-second tick: a killed host's task would wait 100 s more). One ZRANGE.
        "unacked_restore_interval": env_int("BROKER_RESTORE_INTERVAL", 10, minimum=1),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 2,
    }
_results_dir = VAR_DIR / "celery-results"
_results_dir.mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND",
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else f"file://{_results_dir}",
)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing fails fast when the broker is down (the message waits in core's outbox instead of
# the request waiting ~20 s for kombu's default retries); OUTBOX_DISPATCH_SECONDS: how often beat sends
# what waits there.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# one retry, at once: it reconnects a pooled connection the broker dropped (a broker restart)
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
OUTBOX_DISPATCH_SECONDS = env_int("OUTBOX_DISPATCH_SECONDS", 15, minimum=1)
GPU_TASK_SOFT_TIME_LIMIT = env_int("GPU_TASK_SOFT_TIME_LIMIT", 600, minimum=1)
GPU_TASK_TIME_LIMIT = env_int("GPU_TASK_TIME_LIMIT", 660, minimum=1)
INFERENCE_DEVICE = env_str("INFERENCE_DEVICE", "auto")
PRESEGMENT_MIN_AREA = env_float("PRESEGMENT_MIN_AREA", 20.0)
# Click-to-segment (inference.interactive): each web process holds the maps of recent images
# (INTERACTIVE_MAPS_CACHE_MB, float16, ~7 MB per 1024x768 field); an image without maps gets
# them from the `interactive` queue's worker (INTERACTIVE_MAPS_WORKER; off: the web process
# computes them itself), the click waiting for them up to INTERACTIVE_MAPS_TIMEOUT seconds.
INTERACTIVE_MAPS_CACHE_MB = env_int("INTERACTIVE_MAPS_CACHE_MB", 128, minimum=8)
INTERACTIVE_MAPS_WORKER = env_bool("INTERACTIVE_MAPS_WORKER", True)
INTERACTIVE_MAPS_TIMEOUT = env_int("INTERACTIVE_MAPS_TIMEOUT", 30, minimum=1)
# torch's intra-op threads in the interactive worker's pool process (0: torch's default, one per
# core). One by default: on a CPU that a training job or another worker keeps busy, two threads
# wait for each other at every barrier and a window's nnU-Net pass took 2.8 s instead of 0.15 s
# (docs/architecture.md, "Click-to-segment").
INTERACTIVE_TORCH_THREADS = env_int("INTERACTIVE_TORCH_THREADS", 1, minimum=0)
# Liveness of pre-segmentation (inference.services): a running image's worker writes a
# heartbeat every PRESEGMENT_HEARTBEAT_SECONDS; the watchdog re-queues an image whose heartbeat
# is older than PRESEGMENT_HEARTBEAT_TIMEOUT (its worker died) up to PRESEGMENT_MAX_ATTEMPTS
# runs, then fails it with the reason; an image queued for PRESEGMENT_QUEUED_TIMEOUT with no
# message waiting in the outbox lost its task and is re-queued the same way.
PRESEGMENT_HEARTBEAT_SECONDS = env_int("PRESEGMENT_HEARTBEAT_SECONDS", 10, minimum=1)
PRESEGMENT_HEARTBEAT_TIMEOUT = env_int("PRESEGMENT_HEARTBEAT_TIMEOUT", 60, minimum=2)
PRESEGMENT_MAX_ATTEMPTS = env_int("PRESEGMENT_MAX_ATTEMPTS", 3, minimum=1)
PRESEGMENT_QUEUED_TIMEOUT = env_int("PRESEGMENT_QUEUED_TIMEOUT", 6 * 3600, minimum=60)
# Tiled pre-segmentation of large images and slides (inference.tiled, cytoseg.tiled): cores of
# PRESEGMENT_TILE_SIZE px, each read with PRESEGMENT_TILE_MARGIN px around it (0: two of the
# model's cell diameters, cytoseg.tiled.margin_for), PRESEGMENT_TILES_PER_TASK tiles per task
# (one batch per backend call): the tasks of one slide are shared by every worker of the queue.
PRESEGMENT_TILE_SIZE = env_int("PRESEGMENT_TILE_SIZE", 1024, minimum=128)
PRESEGMENT_TILE_MARGIN = env_int("PRESEGMENT_TILE_MARGIN", 0, minimum=0)
PRESEGMENT_TILES_PER_TASK = env_int("PRESEGMENT_TILES_PER_TASK", 4, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Training (training/): job folders, worker liveness, promotion gate defaults, the watchdog.
# TRAINING_DIR is a worker's scratch (datasets prepared for the trainers, their outputs until
# they are uploaded); MODEL_DIR is scratch for checking uploaded packages. Neither is kept:
# model files live in the default storage (training.services.artifacts).
TRAINING_DIR = Path(env_str("TRAINING_DIR", str(VAR_DIR / "training")))
MODEL_DIR = Path(env_str("MODEL_DIR", str(VAR_DIR / "models")))
# Each host's cache of model files fetched from storage, keyed by their sha256 and evicted,
# least recently used first, above this size.
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(VAR_DIR / "model-cache")))
MODEL_CACHE_MAX_BYTES = env_int("MODEL_CACHE_MAX_BYTES", 20 * 1024**3, minimum=1024**2)
MODEL_UPLOAD_MAX_BYTES = env_int("MODEL_UPLOAD_MAX_BYTES", 2 * 1024**3, minimum=1024)
TRAINING_DEVICE = env_str("TRAINING_DEVICE", "auto")
TRAINING_TASK_SOFT_TIME_LIMIT = env_int("TRAINING_TASK_SOFT_TIME_LIMIT", 48 * 3600, minimum=60)
TRAINING_TASK_TIME_LIMIT = env_int("TRAINING_TASK_TIME_LIMIT", 48 * 3600 + 900, minimum=60)
TRAINING_HEARTBEAT_SECONDS = env_int("TRAINING_HEARTBEAT_SECONDS", 30, minimum=1)
TRAINING_HEARTBEAT_TIMEOUT = env_int("TRAINING_HEARTBEAT_TIMEOUT", 300, minimum=2)
TRAINING_QUEUED_TIMEOUT = env_int("TRAINING_QUEUED_TIMEOUT", 7 * 24 * 3600, minimum=60)
TRAINING_GATE_METRIC = env_str("TRAINING_GATE_METRIC", "f1_50")
TRAINING_GATE_MARGIN = env_float("TRAINING_GATE_MARGIN", 0.01)
TRAINING_GATE_TOLERANCE = env_float("TRAINING_GATE_TOLERANCE", 0.02)
CELERY_BEAT_SCHEDULE = {
    "training-watchdog": {"task": "training.watchdog", "schedule": 300.0, "options": {"queue": "default"}},
    "core-outbox-dispatch": {
        "task": "core.outbox_dispatch",
        "schedule": float(OUTBOX_DISPATCH_SECONDS),
        "options": {"queue": "default", "expires": float(OUTBOX_DISPATCH_SECONDS)},
    },
    "inference-watchdog": {
        "task": "inference.watchdog",
        "schedule": float(PRESEGMENT_HEARTBEAT_TIMEOUT),
        "options": {"queue": "default", "expires": float(PRESEGMENT_HEARTBEAT_TIMEOUT)},
    },
    "core-idempotency-prune": {
        "task": "core.idempotency_prune",
        "schedule": 24 * 3600.0,
        "options": {"queue": "default"},
    },
    "interchange-export-prune": {
        "task": "interchange.export_jobs_prune",
        "schedule": 3600.0,
        "options": {"queue": "default"},
    },
}

# Exports and imports (interchange/).
EXPORT_ASYNC_CELL_THRESHOLD = env_int("EXPORT_ASYNC_CELL_THRESHOLD", 200_000, minimum=1)
EXPORT_ASYNC_IMAGE_THRESHOLD = env_int("EXPORT_ASYNC_IMAGE_THRESHOLD", 1000, minimum=1)
EXPORT_JOB_TTL_HOURS = env_int("EXPORT_JOB_TTL_HOURS", 24, minimum=1)
# nnU-Net / Cellpose exports of a tiled image (a whole slide) are cut into crops of this side (px).
EXPORT_CROP_SIZE = env_int("EXPORT_CROP_SIZE", 1024, minimum=64)
COCO_IMPORT_MAX_BYTES = env_int("COCO_IMPORT_MAX_BYTES", 100 * 1024 * 1024, minimum=1024)
COCO_IMPORT_MAX_ZIP_BYTES = env_int("COCO_IMPORT_MAX_ZIP_BYTES", 4 * 1024**3, minimum=1024)

# Health and worker visibility (core.health, core.workers). GET /healthz gives each check
# (database, cache, broker, file storage) HEALTHZ_TIMEOUT_SECONDS. Every Celery worker writes a
# WorkerHeartbeat row every WORKER_HEARTBEAT_SECONDS; a worker unseen for 3 intervals counts as
# gone, and rows unseen for WORKER_HEARTBEAT_KEEP_HOURS are deleted.
HEALTHZ_TIMEOUT_SECONDS = env_float("HEALTHZ_TIMEOUT_SECONDS", 3.0)
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 10, minimum=1)
WORKER_HEARTBEAT_KEEP_HOURS = env_int("WORKER_HEARTBEAT_KEEP_HOURS", 24, minimum=1)

# Webhooks (webhooks/): signed POSTs of project events to the URLs project admins subscribe.
# A target must resolve to public addresses only (checked when subscribed and again at every
# attempt); WEBHOOK_ALLOW_PRIVATE_TARGETS admits private networks and loopback (an on-premises
# receiver), WEBHOOK_ALLOWED_NETWORKS (CIDRs, e.g. 10.1.2.0/24) admits exactly those networks,
# whatever their kind. A failed attempt is retried WEBHOOK_MAX_ATTEMPTS times in all, after
# WEBHOOK_RETRY_BASE_SECONDS * WEBHOOK_RETRY_FACTOR ** (attempt - 1) seconds (30 s, 90 s ... about
# an hour for the sixth); beat hands due retries to the workers every WEBHOOK_RETRY_POLL_SECONDS.
WEBHOOK_ALLOW_PRIVATE_TARGETS = env_bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", False)
WEBHOOK_ALLOWED_NETWORKS = env_list("WEBHOOK_ALLOWED_NETWORKS", [])
for _network in WEBHOOK_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"WEBHOOK_ALLOWED_NETWORKS: {_network!r} is not a network ({_exc}).") from _exc
WEBHOOK_CONNECT_TIMEOUT = max(env_float("WEBHOOK_CONNECT_TIMEOUT", 5.0), 0.1)
WEBHOOK_READ_TIMEOUT = max(env_float("WEBHOOK_READ_TIMEOUT", 5.0), 0.1)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = max(env_float("WEBHOOK_RETRY_BASE_SECONDS", 30.0), 0.0)
WEBHOOK_RETRY_FACTOR = max(env_float("WEBHOOK_RETRY_FACTOR", 3.0), 1.0)
WEBHOOK_RETRY_POLL_SECONDS = env_int("WEBHOOK_RETRY_POLL_SECONDS", 30, minimum=1)
WEBHOOK_DELIVERY_KEEP_DAYS = env_int("WEBHOOK_DELIVERY_KEEP_DAYS", 30, minimum=1)
CELERY_BEAT_SCHEDULE["webhooks-deliveries-due"] = {
    "task": "webhooks.deliveries_due",
    "schedule": float(WEBHOOK_RETRY_POLL_SECONDS),
    "options": {"queue": "default", "expires": float(WEBHOOK_RETRY_POLL_SECONDS)},
}
CELERY_BEAT_SCHEDULE["webhooks-deliveries-prune"] = {
    "task": "webhooks.deliveries_prune",
    "schedule": 24 * 3600.0,
    "options": {"queue": "default"},
}
