# syntax=docker/dockerfile:1
#
# One image for every helpdesk process. Pick the process with APP (uvicorn factory) and PORT:
#   docker run -e APP=services.tickets.app:create_app -e PORT=8101 helpdesk
# or replace the command to run the CLI, e.g. the one-off migration:
#   docker run -e DATABASE_URL=... helpdesk helpdesk migrate
# Processes, factories and ports: libs/common/stack.py.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: locked deps + our package
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first so source edits do not invalidate this (slow) layer.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY . .
# The migrations folders have no __init__.py; they must still land in site-packages because
# libs.common.migrations resolves them next to the installed code. Fail the build if they don't.
RUN pip install --no-deps . \
 && cd / \
 && python -c "import pathlib; from libs.common.stack import STACK; from libs.common.migrations import REPO_ROOT; \
missing = [str(f) for s in STACK for f in pathlib.Path('/src', s.migrations).rglob('*.py') \
           if not (REPO_ROOT / f.relative_to('/src')).exists()]; \
assert not missing, f'migrations not installed: {missing}'"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 helpdesk \
 && useradd --system --uid 10001 --gid helpdesk --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin helpdesk

COPY --from=build /opt/venv /opt/venv

# No source tree and no .env in the image: configuration comes from the environment only.
# The root filesystem can be read-only; the app only needs a writable /tmp (uploads spool there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HELPDESK_HOME=/tmp/helpdesk \
    APP=gateway.app:create_app \
    PORT=8080
WORKDIR /app

USER 10001:10001
EXPOSE 8080 8101 8102 8103 8104

# Same entry as the local launcher (libs/common/serve.py: uvicorn + uvloop, graceful drain); exec so it is PID 1 and gets
# SIGTERM directly for its graceful shutdown.
CMD ["/bin/sh", "-c", "exec python -m libs.common.serve \"$APP\" --host 0.0.0.0 --port \"$PORT\""]
