"""Fixtures shared by the tickets tests."""

import pytest

from services.tickets.app import create_app
from services.tickets.settings import Settings
from tests.conftest import app_client, settings_for


@pytest.fixture(scope="module")
async def tickets(infra):
    """A client of the tickets app (consumers and jobs running), one app per test module."""
    async with app_client(create_app(settings_for(infra, Settings, "tickets"))) as client:
        yield client
