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


# --- Secrets from files (NAME_FILE) ---------------------------------------------------------------


def _print_settings(names: str, **environ: str) -> subprocess.CompletedProcess[str]:
    # Not the xdist worker's id either: under it the test settings move REDIS_URL's database to
    # the worker's own, and the settings printed would depend on which worker ran the test.
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("SECRET_KEY", "DEBUG", "METRICS_TOKEN", "METRICS_PUBLIC", "PYTEST_XDIST_WORKER")
    }
    clean.update(environ)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            f"print(*(getattr(settings, n) for n in {names.split()!r}), sep='\\n')",
        ],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_reads_its_secrets_from_files(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(KEY + "\n")  # as `echo` leaves it: the newline is not part of the key
    token_file = tmp_path / "metrics_token"
    token_file.write_text("t" * 32)
    channel_file = tmp_path / "channel_key"
    channel_file.write_text("c" * 40 + "\n")
    done = _print_settings(
        "SECRET_KEY METRICS_TOKEN CHANNEL_SECRET_KEY",
        CONTROLPLANE_ENV="production",
        SECRET_KEY_FILE=str(key_file),
        METRICS_TOKEN_FILE=str(token_file),
        CHANNEL_SECRET_KEY_FILE=str(channel_file),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [KEY, "t" * 32, "c" * 40]


def test_the_servers_passwords_come_from_files_into_their_urls(tmp_path):
    (tmp_path / "pg").write_text("p@ss/w:rd\n")
    (tmp_path / "redis").write_text("r3dis\n")
    done = _print_settings(
        "DATABASE_URL REDIS_URL",
        CONTROLPLANE_ENV="production",
        SECRET_KEY=KEY,
        METRICS_TOKEN="m" * 32,
        DATABASE_URL="postgresql://controlplane@postgres:5432/controlplane",
        DATABASE_PASSWORD_FILE=str(tmp_path / "pg"),
        REDIS_URL="redis://redis:6379/0",
        REDIS_PASSWORD_FILE=str(tmp_path / "redis"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        # Quoted, so a password with URL characters in it reaches the server whole.
        "postgresql://controlplane:p%40ss%2Fw%3Ard@postgres:5432/controlplane",
        "redis://:r3dis@redis:6379/0",
    ]


def test_a_password_given_twice_is_refused(tmp_path):
    (tmp_path / "pg").write_text("other")
    done = _print_settings(
        "DATABASE_URL",
        CONTROLPLANE_ENV="demo",
        DATABASE_URL="postgresql://cp:inline@db.example.com/cp",
        DATABASE_PASSWORD_FILE=str(tmp_path / "pg"),
    )
    assert done.returncode != 0
    assert "DATABASE_PASSWORD is set and the URL it is for carries a password too" in done.stderr


def test_a_secret_given_both_ways_is_refused(tmp_path):
    (tmp_path / "key").write_text(KEY)
    done = _load_settings(
        CONTROLPLANE_ENV="production",
        SECRET_KEY=KEY,
        SECRET_KEY_FILE=str(tmp_path / "key"),
        METRICS_TOKEN="m" * 32,
    )
    assert done.returncode != 0
    assert "Both SECRET_KEY and SECRET_KEY_FILE are set" in done.stderr


@pytest.mark.parametrize("problem", ["missing", "empty", "a folder", "unreadable"])
def test_a_secret_file_that_cannot_give_a_value_is_refused_by_name(tmp_path, problem):
    path = tmp_path / "secret_key"
    expected = "the file cannot be read"
    if problem == "empty":
        path.write_text("\n")  # a newline alone is no key
        expected = "the file is empty"
    elif problem == "a folder":
        path.mkdir()
    elif problem == "unreadable":
        path.write_bytes(b"\xff\xfe not text")
    done = _load_settings(
        CONTROLPLANE_ENV="production", SECRET_KEY_FILE=str(path), METRICS_TOKEN="m" * 32
    )
    assert done.returncode != 0
    assert f"SECRET_KEY_FILE={str(path)!r}: {expected}" in done.stderr


def test_typed_readers_take_their_value_from_a_file(monkeypatch, tmp_path):
    (tmp_path / "n").write_text("42\n")
    (tmp_path / "flag").write_text("yes")
    (tmp_path / "hosts").write_text("a.example.com, b.example.com\n")
    monkeypatch.delenv("X_INT", raising=False)
    monkeypatch.setenv("X_INT_FILE", str(tmp_path / "n"))
    monkeypatch.setenv("X_BOOL_FILE", str(tmp_path / "flag"))
    monkeypatch.setenv("X_LIST_FILE", str(tmp_path / "hosts"))
    assert env.env_int("X_INT", 1) == 42
    assert env.env_bool("X_BOOL", False) is True
    assert env.env_list("X_LIST", []) == ["a.example.com", "b.example.com"]
    (tmp_path / "n").write_text("ten")
    with pytest.raises(ImproperlyConfigured, match="X_INT='ten' is not an integer"):
        env.env_int("X_INT", 1)


# --- Redis Sentinel -------------------------------------------------------------------------------


def test_with_sentinels_the_broker_cache_and_layer_are_configured_for_them():
    done = _print_settings(
        "CELERY_BROKER_URL CELERY_BROKER_TRANSPORT_OPTIONS CACHES",
        CONTROLPLANE_ENV="test",
        REDIS_URL="redis://:pw@ignored.example.com:6379/4",
        REDIS_SENTINELS="s1.example.com:26379,s2.example.com:26380",
        REDIS_SENTINEL_MASTER="main",
    )
    assert done.returncode == 0, done.stderr
    broker, options, caches = done.stdout.splitlines()
    assert broker == "sentinel://:pw@s1.example.com:26379/4;sentinel://:pw@s2.example.com:26380/4"
    assert options == "{'visibility_timeout': 300, 'master_name': 'main'}"
    assert "controlplane.redis_clients.RedisCache" in caches


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (
            {"REDIS_SENTINELS": "s1.example.com"},
            "REDIS_SENTINELS: 's1.example.com' is not host:port",
        ),
        ({"REDIS_SENTINELS": "s1.example.com:26379"}, "REDIS_SENTINEL_MASTER is not"),
        ({"REDIS_SENTINEL_MASTER": "main"}, "REDIS_SENTINELS is not"),
    ],
)
def test_a_half_or_bad_sentinel_setting_stops_the_process_naming_it(environ, named):
    done = _print_settings("REDIS_CONFIG", CONTROLPLANE_ENV="test", **environ)
    assert done.returncode != 0
    assert named in done.stderr
