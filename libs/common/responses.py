"""Fast JSON responses for hot paths: rows straight to JSON, no re-validation."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json, to_jsonable_python
from starlette.responses import Response

# We export metrics (Prometheus) and logs (structlog) ourselves; FastAPI's built-in
# OpenTelemetry hooks would cost a few microseconds per request for nothing.
FASTAPI_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


class FastJSONResponse(Response):
    """Serialises dicts, lists, UUIDs and datetimes in Rust (pydantic-core).

    For endpoints whose data already has the response model's shape (rows selected by the
    repository); FastAPI still documents the `response_model` but skips re-validating it.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return to_json(content)


def jsonable(content: Any) -> Any:
    """The same conversion as FastJSONResponse, as Python values (for storing a response)."""
    return to_jsonable_python(content)
