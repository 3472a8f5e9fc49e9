"""Query strings validated as one model (libs/common/query.py)."""

from datetime import datetime
from enum import StrEnum
from typing import Literal

import httpx
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import install_problem_handlers
from libs.common.query import openapi_parameters, parse_query


class Colour(StrEnum):
    red = "red"
    blue = "blue"


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=200, description="Page size")
    kind: list[str] = Field([], alias="type", max_length=3)
    colour: list[Colour] = []
    since: datetime | None = None
    order: Literal["asc", "desc"] = "desc"
    name: str | None = None


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/things", openapi_extra={"parameters": openapi_parameters(Query)})
    async def things(request: Request) -> dict:
        return parse_query(request, Query).model_dump(mode="json", by_alias=True)

    return app


async def get(path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=make_app()), base_url="http://t"
    ) as client:
        return await client.get(path)


async def test_lists_repeat_other_names_take_the_last_value_and_unknown_names_are_ignored():
    response = await get("/things?type=a&type=b&colour=red&limit=5&limit=7&name=x&cf.vendor=z")
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == ["a", "b"]
    assert body["colour"] == ["red"]
    assert body["limit"] == 7
    assert body["name"] == "x"
    assert (await get("/things")).json()["limit"] == 50


async def test_bad_values_are_one_422_problem_naming_each_parameter():
    response = await get("/things?limit=1000000&colour=green&since=yesterday&type=a&type=b&type=c&type=d")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert {error["field"] for error in problem["errors"]} == {"limit", "colour.0", "since", "type"}
    assert all(error["loc"][0] == "query" for error in problem["errors"])


def test_the_fields_are_documented_as_query_parameters():
    parameters = {p["name"]: p for p in make_app().openapi()["paths"]["/things"]["get"]["parameters"]}
    assert list(parameters) == ["limit", "type", "colour", "since", "order", "name"]
    assert parameters["limit"]["description"] == "Page size"
    assert parameters["limit"]["schema"]["maximum"] == 200
    assert parameters["colour"]["schema"]["items"]["enum"] == ["red", "blue"]  # inlined, no $ref
    assert all(p["in"] == "query" and p["required"] is False for p in parameters.values())
