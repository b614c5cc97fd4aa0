"""Our top-level packages are the ones imported, and the registered tasks are the catalogue."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from workers.app import CATALOGUE, app

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "workers", "scheduler", "ops")


@pytest.mark.parametrize("name", PACKAGES)
def test_each_top_level_package_is_imported_from_this_repository(name: str) -> None:
    """Each of our top-level packages is imported from this repository.

    Given our generic top-level names, when one is imported, then it is ours (a producer's own
    ``jobs`` module earlier on ``sys.path`` would shadow it: this catches that).
    """
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_the_registered_tasks_are_exactly_the_catalogue() -> None:
    """The registered tasks are the catalogue's, under their wire names.

    Given the app's explicit catalogue (plus the tests' extra modules), when Celery imports
    its task modules, then the demo task is registered under its wire name and every
    registered task comes from a catalogue module.
    """
    app.loader.import_default_modules()
    extra = tuple(json.loads(os.environ.get("JOBS_EXTRA_TASK_MODULES") or "[]"))
    registered = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert {"demo.charge_order"} <= set(registered)
    if "tests.tasks" in extra:
        assert {"tests.record", "tests.noop", "tests.kill_self"} <= set(registered)
    modules = {name: task.run.__module__ for name, task in registered.items()}
    outside = {name: module for name, module in modules.items() if module not in CATALOGUE + extra}
    assert not outside, f"tasks registered outside the catalogue: {outside}"
    assert {modules[name] for name in registered if name.startswith("demo.")} == {"jobs.demo"}
