"""One AsyncAPI document of every event on the platform, merged from the services' own."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.openapi import MergedDocument
from gateway.proxy import Upstream
from libs.common.asyncapi import merge_asyncapi

DESCRIPTION = """\
Every event the helpdesk publishes on NATS JetStream. Subjects are
`<service>.<tenant>.<aggregate>.<event>`; each message is a CloudEvents 1.0 structured JSON
envelope whose `data` is the payload described here, with the NATS header `Nats-Msg-Id` equal to
the event `id`. Services that are unreachable while this document is built are left out.
"""


def merged_asyncapi(upstreams: list[Upstream], cache_s: float) -> MergedDocument:
    def merge(documents: list[tuple[Upstream, dict[str, Any]]]) -> dict[str, Any]:
        return merge_asyncapi(
            ((upstream.name, document) for upstream, document in documents), description=DESCRIPTION
        )

    return MergedDocument(upstreams, "/asyncapi.json", merge, cache_s)


router = APIRouter(include_in_schema=False)


@router.get("/asyncapi.json")
async def asyncapi(request: Request) -> Response:
    """The events of the whole platform (AsyncAPI 3.0): channels, messages and payload schemas."""
    merged: MergedDocument = request.app.state.asyncapi
    return Response(await merged.body(), media_type="application/json")
