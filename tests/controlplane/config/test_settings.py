"""Configuration fails loudly, at start, naming the variable."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from controlplane.config import env

KEY = secrets.token_urlsafe(50)


def _load_settings(**environ: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "DEBUG", "METRICS_TOKEN", "METRICS_PUBLIC")
    }
    clean.update(environ)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_a_secret_key():
    done = _load_settings(CONTROLPLANE_ENV="production")
    assert done.returncode != 0
    assert "SECRET_KEY is required" in done.stderr


@pytest.mark.parametrize("key", ["s3cret-" * 4, "x" * 60], ids=["short", "repetitive"])
def test_production_refuses_a_weak_secret_key(key):
    done = _load_settings(CONTROLPLANE_ENV="production", SECRET_KEY=key, METRICS_TOKEN="m" * 32)
    assert done.returncode != 0
    assert "SECRET_KEY must be at least 50 characters long, with at least 5" in done.stderr


def test_production_starts_with_a_secret_key_and_debug_off():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.DEBUG)",
        ],
        env={
            **os.environ,
            "CONTROLPLANE_ENV": "production",
            "SECRET_KEY": KEY,
            "METRICS_TOKEN": "m" * 32,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_production_refuses_to_start_with_metrics_open_unless_told_so():
    production = {"CONTROLPLANE_ENV": "production", "SECRET_KEY": KEY}

    closed = _load_settings(**production)
    assert closed.returncode != 0
    assert "METRICS_TOKEN is required in production" in closed.stderr
    assert "METRICS_PUBLIC=true" in closed.stderr
    short = _load_settings(**production, METRICS_TOKEN="short")
    assert "METRICS_TOKEN must be at least 16 characters" in short.stderr
    both = _load_settings(**production, METRICS_TOKEN="m" * 32, METRICS_PUBLIC="true")
    assert "choose one" in both.stderr

    for chosen in ({"METRICS_PUBLIC": "true"}, {"METRICS_TOKEN": "m" * 32}):
        done = _load_settings(**production, **chosen)
        assert done.returncode == 0, done.stderr


def test_a_bad_boolean_names_the_variable():
    done = _load_settings(CONTROLPLANE_ENV="demo", DEBUG="maybe")
    assert done.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in done.stderr


def test_an_unknown_environment_is_refused():
    done = _load_settings(CONTROLPLANE_ENV="staging")
    assert done.returncode != 0
    assert "CONTROLPLANE_ENV='staging' must be one of" in done.stderr


def test_a_non_postgres_database_url_is_refused():
    done = _load_settings(CONTROLPLANE_ENV="demo", DATABASE_URL="sqlite:///x.db")
    assert done.returncode != 0
    assert "DATABASE_URL must point at PostgreSQL" in done.stderr


def test_typed_helpers_fail_on_bad_values(monkeypatch):
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_INT='ten' is not an integer"):
        env.env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "-3")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_int("X_INT", 1, minimum=0)
    monkeypatch.setenv("X_FLOAT", "1.5s")
    with pytest.raises(ImproperlyConfigured, match=r"X_FLOAT='1\.5s' is not a number"):
        env.env_float("X_FLOAT", 1.0)
    monkeypatch.delenv("X_REQUIRED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="X_REQUIRED is required"):
        env.env_str("X_REQUIRED")
    monkeypatch.setenv("X_BOOL", "Yes")
    assert env.env_bool("X_BOOL", False) is True


def test_outside_the_tests_each_process_keeps_its_connections_in_a_pool():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "db = settings.DATABASES['default']; "
            "options = db['OPTIONS']; "
            "print(db['CONN_MAX_AGE'], options['pool']['max_size'], options['options'])",
        ],
        env={**os.environ, "CONTROLPLANE_ENV": "demo", "DB_POOL_MAX_SIZE": "7"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # The pool's connections keep the generic plans the prepared statements rely on.
    assert done.stdout.split() == ["0", "7", "-c", "plan_cache_mode=force_generic_plan"]


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_production_refuses_to_start_without_its_servers(missing):
    # Never the embedded servers' addresses: production would run on an empty database.
    production = {
        "CONTROLPLANE_ENV": "production",
        "SECRET_KEY": KEY,
        "METRICS_TOKEN": "m" * 32,
        "DATABASE_URL": "postgres://cp@db.example.com/cp",
        "REDIS_URL": "redis://redis.example.com:6379/0",
    }
    del production[missing]
    clean = {k: v for k, v in os.environ.items() if k != missing}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**clean, **production},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{missing} is required in production" in done.stderr


def test_check_deploy_is_clean_with_the_documented_production_environment():
    documented = {
        "CONTROLPLANE_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "METRICS_TOKEN": "m" * 32,
        "ALLOWED_HOSTS": "cp.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://cp.example.com",
        "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://cp@db.example.com/cp",
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://redis.example.com:6379/0",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=django_settings.BASE_DIR,
        env={**os.environ, **documented},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_redirects_plain_http_but_not_the_probes(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/login/").status_code == 301
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/engine/commands").status_code == 401  # answered, not redirected
    assert client.get("/login/", secure=True).status_code == 200
