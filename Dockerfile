# One image for every process: web (the default command), Celery worker and beat, migrations and
# simulated engines (see docker-compose.yml for the commands).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 controlplane \
 && useradd --system --uid 10001 --gid controlplane --home-dir /home/controlplane --create-home \
      --shell /usr/sbin/nologin controlplane

# Chromium renders the weekly report's charts to PNG (kaleido drives the system browser).
RUN apt-get update \
 && apt-get install --yes --no-install-recommends chromium \
 && rm -rf /var/lib/apt/lists/*
ENV CHROMIUM_PATH=/usr/bin/chromium

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when the lock changes. Every package
# of production (and nothing of the demo's embedded servers or the tests), each checked against
# its hashes; the SDK, on no index, is installed from its folder below.
COPY requirements/production.lock requirements/
RUN pip install --require-hashes --requirement requirements/production.lock

COPY . .
# Editable, so the code runs from /app: settings find templates/ and static/ beside the packages
# (BASE_DIR), which a copy into site-packages would leave behind.
RUN pip install --no-deps --editable ./engine_sdk --editable . \
 && CONTROLPLANE_ENV=production \
    SECRET_KEY=build-time-only-collectstatic-needs-settings-0123456789 METRICS_PUBLIC=true \
    DATABASE_URL=postgres://build-time-only/none REDIS_URL=redis://build-time-only:6379/0 \
    python manage.py collectstatic --noinput --verbosity 0 \
 && install --directory --owner=controlplane --group=controlplane /app/.data

# The code stays root's and read-only; the process may write only under /app/.data
# (CONTROLPLANE_DATA_DIR's default: the simulated engines' journals live there).
USER controlplane

ENV CONTROLPLANE_ENV=production
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "controlplane.config.asgi:application", \
     "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", \
     "--no-access-log", "--no-proxy-headers", "--ws-max-size", "16777216", "--ws-per-message-deflate", "false"]
