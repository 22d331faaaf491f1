"""The README's promises about where things are: the same files in every service, and from an
event's name to the function that handles it in one step."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from shared.messaging import topology

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SERVICES = ("accounts", "inventory", "checkout", "notifications")
# What every service's folder holds (the README's "Where things are" table).
EVERY_SERVICE_HAS = ("bootstrap.py", "app.py", "__main__.py", "config.py", "api.py", "schemas.py", "handlers",
                     "repository.py", "models.py", "migrations", "errors.py", "README.md")


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_folder_has_the_same_table_of_contents(service):
    folder = ROOT / "services" / service
    missing = [name for name in EVERY_SERVICE_HAS
               if not (folder / name).exists() and not (folder / f"{name}.py").exists() and not (folder / name).is_dir()]
    assert missing == []


def test_the_readme_says_what_each_of_those_files_is_for():
    section = README.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    described = set(re.findall(r"^\| `([^`]+)`", section, re.MULTILINE)) | set(re.findall(r"`, `([^`]+)`", section))
    assert {name.removesuffix(".py") for name in EVERY_SERVICE_HAS} <= {n.removesuffix(".py").rstrip("/") for n in described}


def _events_table() -> dict[str, str]:
    """event type -> the 'consumed by' cell of the README's Events table."""
    section = README.split("## Events", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for event in re.findall(r"`([a-z_.]+)`", cells[0]):
                rows[event] = cells[2]
    return rows


@pytest.mark.parametrize("service, event", [(s, e) for s, events in topology.SUBSCRIPTIONS.items() for e in events])
def test_the_events_table_names_the_function_that_handles_each_event(service, event):
    cell = _events_table().get(event, "")
    named = {path.split("/")[1]: (path, function)
             for function, path in re.findall(r"\[`(\w+)`\]\((services/[\w/]+\.py)\)", cell)}
    assert service in named, f"the README's Events table names no handler of {service} for {event}"
    path, function = named[service]
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert callable(getattr(module, function, None)), f"{path} has no {function}"
    # and it is the handler the service's composition root wires for that event (notifications
    # wraps `send_notification` in one `handle` that logs failed attempts)
    wired = _wired_handlers(service)
    assert event in wired
    handler = getattr(wired[event], "func", wired[event])  # a handler given its settings is a partial
    assert handler.__name__ in (function, "handle") and handler.__module__ == module.__name__


def _wired_handlers(service: str) -> dict:
    bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    settings = importlib.import_module(f"services.{service}.config").Settings(
        service_name=service, database_url="postgresql+psycopg://nobody@127.0.0.1:1/unused")
    root = bootstrap.bootstrap("consumer", settings)  # opens no connection
    try:
        return dict(root.event_handlers)
    finally:
        root.close()
