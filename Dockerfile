# The fraud detector service. Built by deploy/docker-compose.yml; the config
# file is mounted at /config (see the compose file).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package build needs: keeps .venv/.stack/tests out of the
# image and lets Docker cache the dependency layer on code-only changes.
COPY pyproject.toml README.md ./
COPY detector ./detector
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home detector

USER detector
# Prometheus metrics (the detector's default metrics port).
EXPOSE 29100

CMD ["detector", "run", "--config", "/config/detector.yaml"]
