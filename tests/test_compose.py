"""docker-compose.yml, as a compose client reads it: a deployment that can be run as it is.

No container engine is needed: `docker-compose config` validates and resolves the file (anchors,
defaults, paths), and the assertions read what it resolved. The settings are then loaded with the
web service's environment, its secrets written by deploy/make_secrets.py, as the container would.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SECRETS_DIR = "/run/secrets/"
# name:1.2 or name:1.2.3, maybe -variant: a release, never `latest` nor a bare major ("redis:7").
PINNED = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._/-]*):(?P<version>\d+\.\d+(\.\d+)?)(-[a-z0-9.]+)?$"
)
# PostgreSQL's releases are major.minor; these number theirs major.minor.patch, where a
# major.minor tag still moves from patch to patch.
THREE_PART = {"caddy", "redis", "trading-controlplane"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]+@")
JOBS = {"migrate"}  # run once per `up`; the others wait for their success


def _make_secrets_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_secrets", REPO / "deploy/make_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_secrets = _make_secrets_module()


def compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail(
            "docker-compose is not installed (the compose client that checks docker-compose.yml): "
            "apt-get install docker-compose",
            pytrace=False,
        )
    # Only what a shell needs: the file's ${VAR:-default}s resolve to their defaults, not to
    # whatever this machine's environment holds.
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    return subprocess.run(
        [executable, "--file", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved() -> subprocess.CompletedProcess[str]:
    return compose_config("config")


@pytest.fixture(scope="module")
def compose(resolved: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)


def test_the_file_validates(resolved):
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stderr.strip() == ""  # no warning either (an unset variable, a dropped key)


def test_every_process_is_health_checked_and_restarted(compose):
    services = compose["services"]
    expected = {"caddy", "postgres", "redis", "web", "worker", "beat", "engines", "backup"}
    assert expected <= set(services)
    for name, service in services.items():
        if name in JOBS:
            assert service["restart"] == "no", name
            # Its exit code is its health: every process that needs the schema waits for it.
            for other in ("web", "worker", "beat"):
                condition = services[other]["depends_on"][name]["condition"]
                assert condition == "service_completed_successfully"
            continue
        assert service.get("restart") in ("unless-stopped", "always"), name
        healthcheck = service.get("healthcheck")
        assert healthcheck and not healthcheck.get("disable"), f"{name} has no health check"
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name


def test_beat_is_checked_through_the_heartbeat_it_writes(compose):
    beat = compose["services"]["beat"]
    heartbeat_file = beat["environment"]["BEAT_HEARTBEAT_PATH"]
    test = beat["healthcheck"]["test"]
    assert test[1:5] == ["python", "-m", "controlplane.config.heartbeat", heartbeat_file]
    worker_check = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "inspect ping" in worker_check and "celery@$$HOSTNAME" in worker_check


def test_backups_are_made_by_the_servers_own_pg_dump_whole_or_not_at_all(compose):
    backup, postgres = compose["services"]["backup"], compose["services"]["postgres"]
    # The same image as the server: pg_dump refuses a server newer than itself.
    assert backup["image"] == postgres["image"]
    script = backup["command"][-1]
    assert "pg_dump --format=custom" in script and ".partial" in script and "mv " in script
    assert "cat /run/secrets/postgres_password" in script and "PGPASSWORD" not in str(
        backup["environment"]
    )
    # On the host (./backups by default), to be copied off the machine.
    assert any(":/backups" in volume for volume in backup["volumes"])


def test_every_image_is_pinned_to_a_release(compose):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in compose["services"].items():
        image = service["image"]
        pinned = PINNED.match(image)
        assert pinned, f"{name}: {image} is not pinned to a release"
        if pinned["name"] in THREE_PART:
            assert pinned["version"].count(".") == 2, f"{name}: {image} is not x.y.z"
        if "build" in service:
            # The image built here carries the project's version.
            assert image.endswith(f":{version}"), f"{name}: {image} is not version {version}"


def test_only_the_proxy_publishes_ports_and_web_can_scale(compose):
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"caddy"}
    assert {port["target"] for port in services["caddy"]["ports"]} == {80, 443}
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed name cannot be scaled"
    assert services["web"].get("expose") == ["8000"]


def test_no_password_is_in_the_environment_only_files(compose):
    declared = set(compose["secrets"])
    assert declared == set(make_secrets.SECRETS)  # `make secrets` writes every one of them
    for name, secret in compose["secrets"].items():
        assert secret["file"] == str(REPO / "secrets" / name)
    for name, service in compose["services"].items():
        # The short form (a name) comes back from `config` in the long one ({source: name}).
        mounted = {
            secret if isinstance(secret, str) else secret["source"]
            for secret in service.get("secrets", [])
        }
        assert mounted <= declared, name
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            assert not URL_WITH_PASSWORD.search(value), f"{name}: {key} carries a password"
            if key.endswith("_FILE"):
                assert value.startswith(SECRETS_DIR), f"{name}: {key}={value}"
                assert value.removeprefix(SECRETS_DIR) in mounted, f"{name}: {key} not mounted"
            else:
                assert not SECRET_NAME.search(key), f"{name}: {key} is set in plain text"
    # PostgreSQL and Redis take theirs from the same files the control plane reads.
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == SECRETS_DIR + "postgres_password"
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert f'--requirepass "$$(cat {SECRETS_DIR}redis_password)"' in redis_command
    assert {"source": "redis_password"} in compose["services"]["redis"]["secrets"]


def test_postgres_is_sized_for_every_pool(compose):
    services = compose["services"]
    command = services["postgres"]["command"]
    settings = dict(
        item.split("=", 1) for flag, item in zip(command[1::2], command[2::2], strict=True)
    )
    assert {flag for flag in command[1::2]} == {"-c"}
    pools = {
        name: int(service["environment"]["DB_POOL_MAX_SIZE"])
        for name, service in services.items()
        if "DB_POOL_MAX_SIZE" in service.get("environment", {})
    }
    # Five web replicas, every other process's pool and the migration: within max_connections,
    # with room left for psql, pg_dump and the superuser's reserved slots.
    needed = 5 * pools.pop("web") + sum(pools.values()) + 1
    assert needed + 20 <= int(settings["max_connections"])
    assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on"


def test_the_settings_accept_the_web_environment_with_its_secret_files(compose, tmp_path):
    secrets = tmp_path / "secrets"
    assert sorted(make_secrets.make_secrets(secrets)) == sorted(make_secrets.SECRETS)
    assert make_secrets.make_secrets(secrets) == []  # kept: a second run changes nothing
    assert all((secrets / name).stat().st_mode & 0o777 == 0o644 for name in make_secrets.SECRETS)
    environment = {
        key: str(value).replace(SECRETS_DIR, f"{secrets}/")
        for key, value in compose["services"]["web"]["environment"].items()
    }
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.SECRET_KEY, s.METRICS_TOKEN, s.CHANNEL_SECRET_KEY, s.DATABASE_URL, "
            "s.REDIS_URL, s.SECURE_SSL_REDIRECT, s.TRUSTED_PROXY_COUNT, s.ALLOWED_HOSTS)",
        ],
        cwd=REPO,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    read = {name: (secrets / name).read_text().strip() for name in make_secrets.SECRETS}
    assert done.stdout.split(" ", 7) == [
        read["secret_key"],
        read["metrics_token"],
        read["channel_secret_key"],
        f"postgresql://controlplane:{read['postgres_password']}@postgres:5432/controlplane",
        f"redis://:{read['redis_password']}@redis:6379/0",
        "True",
        "1",
        "['localhost', '127.0.0.1', 'web']\n",
    ]


def test_the_proxy_terminates_tls_and_balances_over_every_web_replica(compose):
    caddy = compose["services"]["caddy"]
    assert f"{REPO / 'deploy/Caddyfile'}:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert caddy["environment"]["TLS_ISSUER"] == "internal"  # Caddy's local CA by default
    caddyfile = (REPO / "deploy/Caddyfile").read_text()
    lines = [line.split("#")[0].strip() for line in caddyfile.splitlines()]
    assert "{$SITE_HOST:localhost} {" in lines
    assert "tls {$TLS_ISSUER:internal}" in lines
    # Every address of the `web` service, looked up again as replicas come and go.
    assert "dynamic a web 8000 {" in lines
    assert "reverse_proxy {" in lines
    assert caddyfile.count("{") == caddyfile.count("}")
