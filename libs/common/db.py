"""Async engine, sessions and the request-scoped transaction every endpoint shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from libs.common.settings import CommonSettings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata(schema: str) -> MetaData:
    """MetaData bound to one service's schema, with stable constraint names for Alembic."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> str:
    """Accept plain postgresql:// URLs (as ops write them) and use the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def plain_dsn(url: str) -> str:
    """libpq-style DSN for raw asyncpg connections (LISTEN, admin tasks)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(settings: CommonSettings, **overrides: Any) -> AsyncEngine:
    """The service's pooled engine, sized by settings."""
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_recycle": settings.db_pool_recycle_s,
        "pool_pre_ping": settings.db_pool_pre_ping,
        "connect_args": {
            "server_settings": {
                "application_name": f"helpdesk-{settings.service_name}",
                "statement_timeout": str(settings.db_statement_timeout_ms),
            }
        },
    }
    options.update(overrides)
    return create_async_engine(async_url(settings.database_url), **options)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the endpoint returns, rolled back on error.

    Scoped to the endpoint function, so the commit happens before the response is sent and a
    201 always means the row (and its outbox event) is durable.
    """
    factory: async_sessionmaker[AsyncSession] = request.app.state.session_factory
    async with factory() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
