"""Analytics HTTP API."""

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from libs.common.auth import Identity, require_roles
from libs.common.db import SessionDep
from services.analytics import service
from services.analytics.schemas import Overview

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


@router.get("/overview", response_model=Overview)
async def get_overview(
    session: SessionDep,
    identity: Identity = require_roles("agent", "admin", "service"),
    from_: Annotated[
        date | None, Query(alias="from", description="First day (UTC), default 29 days before `to`")
    ] = None,
    to: Annotated[date | None, Query(description="Last day (UTC), default today")] = None,
) -> Overview:
    """Tickets created per day for the caller's tenant (days with none included as 0)."""
    return await service.overview(session, identity.tenant, from_, to)
