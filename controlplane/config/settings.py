"""Settings, all from environment variables (see docs/operations.md for the full list)."""

from __future__ import annotations

import importlib.util
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controlplane import redis_clients
from controlplane.config import embedded
from controlplane.config.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_ramp,
    env_raw,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# demo: `make demo` on a laptop; test: the pytest suite; production: everything else.
ENVIRONMENT = env_choice("CONTROLPLANE_ENV", "production", ("production", "demo", "test"))
IS_PRODUCTION = ENVIRONMENT == "production"

if IS_PRODUCTION:
    SECRET_KEY = env_str("SECRET_KEY")
    # As Django's own deployment check wants it (security.W009): a short or repetitive key is
    # refused at start rather than warned about by a check nobody runs.
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        raise ImproperlyConfigured(
            "SECRET_KEY must be at least 50 characters long, with at least 5 different ones: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
else:
    SECRET_KEY = env_str("SECRET_KEY", f"insecure-{ENVIRONMENT}-key-never-use-in-production-0123")

DEBUG = env_bool("DEBUG", ENVIRONMENT == "demo")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if IS_PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_NAME = env_str("SITE_NAME", "Trading Control Plane")

INSTALLED_APPS = [
    "controlplane.admin_site.ControlPlaneAdminConfig",  # django.contrib.admin, see there
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "django_celery_beat",
    "axes",  # login throttling
    "ninja",  # only so its API docs page uses the static files it ships, not a CDN
    "controlplane",
    "risk",
    "alerts",
    "golive",
    "journal",
    "dashboard",
    "controlplane.config.apps.WiringConfig",  # the wiring, once every app is loaded
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before anything that queries: a NUL byte in a path, parameter, field or cookie is refused.
    "controlplane.input_guard.RejectNulBytesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The request's id and user in every log line it writes (LOG_FORMAT=json).
    "controlplane.logcontext.RequestContextMiddleware",
    # Every page needs a login; the few public views opt out with @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out login into the lockout page (AXES_LOCKOUT_TEMPLATE).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "controlplane.config.urls"
# The demo runs with DEBUG=True, whose error pages list the settings: DATABASE_URL, REDIS_URL and
# the like carry passwords in their values, which Django's own filter does not hide.
DEFAULT_EXCEPTION_REPORTER_FILTER = "controlplane.config.reporting.UrlPasswordSafeFilter"
DEFAULT_EXCEPTION_REPORTER = "controlplane.config.reporting.UrlPasswordSafeReporter"
ASGI_APPLICATION = "controlplane.config.asgi.application"
WSGI_APPLICATION = None

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
                "controlplane.config.context_processors.site",
                "dashboard.context_processors.fleet_kill",
            ],
        },
    },
]


# --- PostgreSQL ----------------------------------------------------------------------------------
def _service_url(name: str, embedded_url: str, example: str) -> str:
    """The server a variable names; outside production, the embedded one when it is unset.
    Production never falls back on an embedded server: it would run on an empty database."""
    value = env_raw(name)
    if value:
        return _with_password(value, name.replace("_URL", "_PASSWORD"))
    if IS_PRODUCTION:
        raise ImproperlyConfigured(
            f"{name} is required in production (CONTROLPLANE_ENV=production), e.g. "
            f"{name}={example}. The embedded servers are for the demo and the tests "
            f"(CONTROLPLANE_ENV=demo or test)."
        )
    return embedded_url


def _with_password(url: str, name: str) -> str:
    """The URL with the password that NAME (or the file NAME_FILE) holds, when it is set.

    So a deployment keeps only the password in a secret file (the one the database server reads
    too) and the rest of the address in plain configuration."""
    password = env_raw(name)
    if password is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise ImproperlyConfigured(
            f"{name} is set and the URL it is for carries a password too: keep only one."
        )
    user, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


DATABASE_URL = _service_url(
    "DATABASE_URL",
    embedded.embedded_database_url(),
    "postgres://controlplane:PASSWORD@db.example.com:5432/controlplane",
)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        # Tests: no connection may outlive its thread, or the test database cannot be dropped.
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0 if ENVIRONMENT == "test" else 60, minimum=0),
        # No SELECT 1 before every reuse: the engine sockets' database calls are the hot path
        # (a profiled frame spent 14 % of its time on it). A connection that died fails its
        # next statement once; the batch is not acked and the engine resends it.
        conn_health_checks=False,
    )
}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...).")
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int(
    "DB_CONNECT_TIMEOUT", 5, minimum=1
)
# The statements that follow every engine batch are prepared once per connection
# (controlplane.sqlscript), and their plans made once too (generic), not again for each batch's
# values: they look rows up by engine and key, which one plan serves whatever the values. The
# ORM's client-side cursors prepare nothing, so this setting touches only those. It needs a
# connection of its own per session (no pooler that shares one between clients' transactions).
DATABASES["default"]["OPTIONS"]["options"] = "-c plan_cache_mode=force_generic_plan"
# Django runs each HTTP request's synchronous code in a thread of its own under ASGI, and its
# connections belong to a thread: without a pool every API call (a kill among them) opened a new
# PostgreSQL connection, and paid for its backend's cold caches and for preparing the scripts'
# statements again. The pool keeps whole connections (each still one client's session, with its
# prepared statements), handed to one thread at a time.
if env_bool("DB_POOL_ENABLED", ENVIRONMENT != "test"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django requires 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 2, minimum=0),
        "max_size": env_int("DB_POOL_MAX_SIZE", 20, minimum=1),
        # A request that waits longer than this for a connection fails instead of hanging.
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# manage.py backup (controlplane/backups.py): where its pg_dump files go, and how many are kept.
BACKUP_DIR = env_str("BACKUP_DIR", str(embedded.data_dir() / "backups"))
BACKUP_KEEP = env_int("BACKUP_KEEP", 14, minimum=1)

# --- Redis: Channels layer, Celery broker, cache --------------------------------------------------
REDIS_URL = _service_url(
    "REDIS_URL", embedded.embedded_redis_url(), "redis://redis.example.com:6379/0"
)
if ENVIRONMENT == "test" and os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test workers each get their own Redis database, so their channel groups and
    # task queues cannot cross.
    _worker = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw") or 0)
    _parts = urlsplit(REDIS_URL)
    REDIS_URL = urlunsplit(_parts._replace(path=f"/{1 + _worker % 15}"))


def _redis_db(url: str) -> str:
    return urlsplit(url).path.strip("/") or "0"


# Redis Sentinel (optional): the sentinels (host:port, comma-separated) and the name of the master
# they monitor; every connection then goes to the master they name and follows a failover.
# REDIS_URL still gives the database number and the master's password (its host is not used).
REDIS_CONFIG = redis_clients.make_config(
    REDIS_URL,
    env_list("REDIS_SENTINELS", []),
    env_str("REDIS_SENTINEL_MASTER", ""),
    env_str("REDIS_SENTINEL_PASSWORD", ""),
)


CHANNEL_LAYERS = {
    "default": {
        # Only "replaced by a newer connection" messages to engine sockets go through the layer;
        # command pushes and live updates use one subscription per process (controlplane.hub),
        # whose channels take this prefix too. The pub/sub layer delivers ~9x more group messages
        # per second than the list-based one on this hardware (see DESIGN.md).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Redis pub/sub channels ignore the database number: the prefix carries it, so parallel
        # test workers (each on its own database) and their servers cannot hear each other.
        "CONFIG": {
            "hosts": [redis_clients.channel_layer_host(REDIS_CONFIG)],
            "prefix": f"cp-{ENVIRONMENT}-{_redis_db(REDIS_URL)}",
        },
    }
}

CACHES = {
    "default": {
        # Django's Redis cache, its connections made by controlplane.redis_clients (Sentinel too).
        "BACKEND": "controlplane.redis_clients.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"cp-{ENVIRONMENT}",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

CELERY_BROKER_URL, _broker_options = redis_clients.celery_broker(REDIS_CONFIG)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the task for another worker
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "controlplane.config.beat:HeartbeatScheduler"
# A file beat touches after each pass of its schedule, for a health check to look at
# (python -m controlplane.config.heartbeat FILE); empty: none.
BEAT_HEARTBEAT_PATH = env_str("BEAT_HEARTBEAT_PATH", "")
# Only one beat sends the schedule (controlplane.beat_lock): its lease in Redis lasts this long
# unless renewed, which bounds how long the schedule stops when the beat holding it dies.
BEAT_LOCK_TTL_S = env_float("BEAT_LOCK_TTL_S", 30.0, minimum=1.0)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300, **_broker_options}

# --- Auth ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:fleet"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_HTTPONLY = True
# Messages wait for the next page in the session (kept server-side), not in a cookie: a new
# engine's token is shown once in a message, and no token may ever travel in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", IS_PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", IS_PRODUCTION)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Production is served over HTTPS only (a TLS-terminating proxy): a browser's plain HTTP is
# redirected. Not the probes and the scrape, which reach the web process directly inside its
# network, nor the engines' HTTP endpoints: a redirect protects no token already sent, and an
# engine's POST does not follow one.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", IS_PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^api/v1/engine/"]
# A day by default: long enough to matter, short enough to undo a mistake (HSTS cannot be taken
# back before it expires); raise it to a year (31536000) once the site's HTTPS is settled.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 86400 if IS_PRODUCTION else 0, minimum=0)
# Both bind every subdomain of the site's domain, which only its owner can decide: off unless set.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# check --deploy's reminders of those two choices, which are the domain owner's, not ours.
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]

# The client's address (audit log, login throttling) is the TCP peer's, unless the site is behind
# this many reverse proxies that each append the address they saw to X-Forwarded-For: then it is
# the one the outermost proxy saw, counted from the right. A client's own X-Forwarded-For is never
# believed: with 0 it is ignored, and behind proxies its entries are left of the trusted ones.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed logins for one username from
# one address, that pair is locked out for LOGIN_COOLOFF_MINUTES, the right password included.
# Another person at the same address, or the same person elsewhere, still logs in.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("LOGIN_THROTTLE_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "controlplane.login.locked_out"  # the lockout page, with its minutes
AXES_USERNAME_CALLABLE = "controlplane.login.attempt_username"  # bounded to what a name can be
AXES_CLIENT_IP_CALLABLE = "controlplane.audit.client_ip"  # TRUSTED_PROXY_COUNT, as the audit log
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"  # failures in PostgreSQL, audited too

if ENVIRONMENT == "test":
    # Hashing cost is not what the suite tests; keep logins fast.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# --- I18N / time ---------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
OPERATOR_TIME_ZONE = env_str("OPERATOR_TIME_ZONE", "UTC")

# --- Static files --------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT: Path | None = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
if not IS_PRODUCTION and not STATIC_ROOT.exists():
    STATIC_ROOT = None  # demo and tests serve straight from static/ through the finders
# Plotly.js comes from the plotly wheel (its package_data), served as /static/vendor/plotly/.
_plotly_spec = importlib.util.find_spec("plotly")
assert _plotly_spec is not None and _plotly_spec.origin is not None
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", Path(_plotly_spec.origin).parent / "package_data"),
]
WHITENOISE_USE_FINDERS = True  # serve straight from static/ in demo and tests, no collectstatic

# --- Email ---------------------------------------------------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "controlplane@localhost")
EMAIL_ENABLED = env_bool("EMAIL_ENABLED", True)
REPORT_TIMEZONE = env_str("REPORT_TIMEZONE", "UTC")  # weekly report: Monday 07:00 here
# Alert evaluation runs in Celery; off, stored data schedules no evaluation (the sweep still runs).
ALERTS_ENABLED = env_bool("ALERTS_ENABLED", True)
# The web process collects its cyclic garbage and hands free heap pages back to the system once a
# burst of load is over (config.memory); off, it stays at its peak memory. Off in tests: a full
# collection at a moment of its own choosing would make what they watch of the collector vary.
MEMORY_TIDY_ENABLED = env_bool("MEMORY_TIDY_ENABLED", ENVIRONMENT != "test")

# --- Prometheus ----------------------------------------------------------------------------------
# When set, /metrics wants "Authorization: Bearer <METRICS_TOKEN>". Without one it answers only
# where METRICS_PUBLIC is true: by default in the demo and the tests; in production only when the
# deployer says so, since the figures (engines, positions' count, alerts) are the desk's business.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", not IS_PRODUCTION)
if METRICS_TOKEN and METRICS_PUBLIC and env_raw("METRICS_PUBLIC") is not None:
    raise ImproperlyConfigured(
        "METRICS_TOKEN is set and METRICS_PUBLIC=true: choose one (a token, or /metrics open)."
    )
if IS_PRODUCTION and not METRICS_TOKEN and not METRICS_PUBLIC:
    raise ImproperlyConfigured(
        "METRICS_TOKEN is required in production (the bearer token Prometheus sends to "
        "/metrics); set METRICS_PUBLIC=true instead to serve /metrics without one on purpose."
    )
if IS_PRODUCTION and METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters long.")
# Encrypts notification channel targets (Apprise URLs carry credentials); SECRET_KEY when empty.
CHANNEL_SECRET_KEY = env_str("CHANNEL_SECRET_KEY", "")
# How long a worker holds a notification it is sending; after that (a worker killed mid-send)
# the sweep sends it again. SMTP and Apprise time out well before.
NOTIFICATION_LEASE_S = env_float("NOTIFICATION_LEASE_S", 60.0, minimum=1.0)

# --- Engine gateway ------------------------------------------------------------------------------
ENGINE_HEARTBEAT_INTERVAL_S = env_float("ENGINE_HEARTBEAT_INTERVAL_S", 2.0, minimum=0.1)
# An engine whose last frame is older than this is shown (and alerted) as stale.
ENGINE_STALE_AFTER_S = env_float("ENGINE_STALE_AFTER_S", 10.0, minimum=0.5)
# A socket that has authenticated but sent no hello within this is closed (4400): it would hold
# a place in the engine's group and the command hub for nothing.
ENGINE_HELLO_TIMEOUT_S = env_float("ENGINE_HELLO_TIMEOUT_S", 5.0, minimum=0.1)
# Frames one engine connection (or, over HTTP, one engine in one web process) may send: this many
# a second, with bursts of up to ENGINE_FRAME_BURST. An SDK at its defaults sends at most ~50
# events frames a second and a heartbeat every interval; a replay after a reconnect comes in a
# burst. A frame over the rate is answered rate_limited and not processed (docs/protocol.md).
ENGINE_MAX_FRAMES_PER_S = env_float("ENGINE_MAX_FRAMES_PER_S", 100.0, minimum=0.1)
ENGINE_FRAME_BURST = env_int("ENGINE_FRAME_BURST", 500, minimum=1)
# Days of the raw event log kept; older days' partitions are dropped whole, once a day.
EVENT_LOG_RETENTION_DAYS = env_int("EVENT_LOG_RETENTION_DAYS", 30, minimum=1)
# Days of the engines' metric samples, logs and account snapshots kept (each table partitioned
# by day of ts); a daily task archives each older day to ARCHIVE_DIR, then drops it
# (controlplane.retention, docs/operations.md). Samples serve charts and alert rules of recent
# hours; logs serve incident work, weeks later; snapshots give the equity history that reports
# and going-live gates look back over, up to a year.
METRIC_RETENTION_DAYS = env_int("METRIC_RETENTION_DAYS", 30, minimum=1)
ENGINE_LOG_RETENTION_DAYS = env_int("ENGINE_LOG_RETENTION_DAYS", 90, minimum=1)
ACCOUNT_SNAPSHOT_RETENTION_DAYS = env_int("ACCOUNT_SNAPSHOT_RETENTION_DAYS", 365, minimum=1)
# Where the archived days go: <ARCHIVE_DIR>/<table>/<YYYY-MM-DD>.csv.gz (gzip'd CSV with a
# header); manage.py archive_trades writes there too.
ARCHIVE_DIR = env_str("ARCHIVE_DIR", str(embedded.data_dir() / "archive"))

# --- Going live ----------------------------------------------------------------------------------
# The capital ramp (docs/going-live.md): an engine entering small capital may use the first share
# of its target capital, and steps up to each next one once this many days have passed since its
# last step, while its gates still pass. Full production is always 100 %.
CAPITAL_RAMP_STEPS = env_ramp("CAPITAL_RAMP_STEPS", (25, 50, 100))
CAPITAL_RAMP_STEP_DAYS = env_int("CAPITAL_RAMP_STEP_DAYS", 7, minimum=1)
# Live against its baseline (golive.comparison): a return this far apart, in % of the baseline's,
# is a significant divergence.
DIVERGENCE_SIGNIFICANT_PCT = env_float("DIVERGENCE_SIGNIFICANT_PCT", 20.0, minimum=0.1)
# A day of the divergence log this far apart is marked (golive.divergence).
DIVERGENCE_LOG_ALERT_PCT = env_float("DIVERGENCE_LOG_ALERT_PCT", 10.0, minimum=0.1)

# plain for a person at a terminal (demo, tests); json in production, one object per line with
# the request id, the user and the engine (controlplane.logcontext) for a log pipeline.
LOG_FORMAT = env_choice("LOG_FORMAT", "json" if IS_PRODUCTION else "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "controlplane.logcontext.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "controlplane.config.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # django-axes announces itself at INFO in every process it starts in.
    "loggers": {"django.channels.server": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
# In JSON, the worker and beat log through the same handler (so in the same format), not Celery's
# own; in plain, Celery's, which keeps to its --loglevel (manage.py up: CELERY_LOG_LEVEL).
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT == "plain"
