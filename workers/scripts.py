"""Lua scripts, loaded once from ``workers/lua/*.lua`` and registered per Redis client."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

NAMES = (
    "admit",
    "claim",
    "complete",
    "defer",
    "fetch",
    "promote",
    "release",
    "restore",
)


@cache
def source(name: str) -> str:
    """The text of script ``name``."""
    return (resources.files("workers") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The scripts registered on one client; calls go through EVALSHA with NOSCRIPT fallback."""

    def __init__(self, client: redis.Redis) -> None:
        """Register every script on ``client``."""
        self._scripts: dict[str, Script] = {n: client.register_script(source(n)) for n in NAMES}

    def __getattr__(self, name: str) -> Script:
        """The registered script ``name``."""
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None
