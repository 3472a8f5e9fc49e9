"""The committed copy of the event contract: docs/events/*.schema.json and asyncapi.json.

`helpdesk events schemas` regenerates it from the services' `events.EVENTS`; `--check` only
compares (a test runs the same comparison, so a payload change without new files fails).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from libs.common.asyncapi import EventCatalogue, build_asyncapi, merge_asyncapi, published_json_schemas
from libs.common.settings import CommonSettings
from libs.common.stack import STACK

DEFAULT_DIR = Path("docs/events")
ASYNCAPI_FILE = "asyncapi.json"


def event_catalogues() -> dict[str, EventCatalogue]:
    """service -> its EVENTS, for every service of the stack that publishes events."""
    catalogues: dict[str, EventCatalogue] = {}
    for spec in STACK:
        package = spec.app_factory.split(":")[0].rsplit(".", 1)[0]  # services.tickets
        try:
            module = importlib.import_module(f"{package}.events")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.events":
                raise
            continue
        if getattr(module, "EVENTS", None):
            catalogues[module.SERVICE] = module.EVENTS
    return catalogues


def generated_files() -> dict[str, str]:
    """File name -> content of every file of the committed contract."""
    catalogues = event_catalogues()
    documents: dict[str, Any] = published_json_schemas(catalogues)
    # The local `make up` broker; deployments serve their own address at the gateway.
    nats_url = CommonSettings.model_fields["nats_url"].default
    documents[ASYNCAPI_FILE] = merge_asyncapi(
        (service, build_asyncapi(service, events, nats_url=nats_url))
        for service, events in catalogues.items()
    )
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in documents.items()}


def _committed(out_dir: Path) -> dict[str, str]:
    paths = [*out_dir.glob("*.schema.json"), out_dir / ASYNCAPI_FILE]
    return {path.name: path.read_text(encoding="utf-8") for path in paths if path.exists()}


def differences(out_dir: Path = DEFAULT_DIR) -> list[str]:
    """Names of files that are missing, stale or no longer generated."""
    wanted, present = generated_files(), _committed(out_dir)
    return sorted(name for name in wanted.keys() | present.keys() if wanted.get(name) != present.get(name))


def write(out_dir: Path = DEFAULT_DIR) -> list[str]:
    """Bring `out_dir` up to date; returns the names of the files changed or removed."""
    changed = differences(out_dir)
    wanted = generated_files()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        if name in wanted:
            (out_dir / name).write_text(wanted[name], encoding="utf-8")
        else:
            (out_dir / name).unlink()
    return changed
