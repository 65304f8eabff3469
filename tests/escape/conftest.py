"""Escape suite fixtures (the world they build is in world.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from world import MODES, World, _require_mode, run_probes


@pytest.fixture(scope="session", params=MODES)
def escape_results(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    from probes import PROBES

    mode = request.param
    _require_mode(mode)
    world = World(mode)
    try:
        world.build()
        world.start()
        results = asyncio.run(run_probes(world, {n: p[0] for n, p in PROBES.items()}))
    finally:
        world.stop()
    return mode, results
