"""Lua scripts from ``workers/lua/<name>.lua``, registered lazily per Redis client.

Every ``.lua`` file documents its KEYS, ARGV and key layout in its header. Calls go through
EVALSHA with redis-py's NOSCRIPT fallback (a restarted Redis has an empty script cache).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script


@cache
def source(name: str) -> str:
    """The text of script ``name``."""
    return (resources.files("workers") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The scripts registered on one client: ``Scripts(client).claim(keys=..., args=...)``."""

    def __init__(self, client: redis.Redis) -> None:
        """Scripts are registered on ``client`` the first time each is used."""
        self._client = client
        self._scripts: dict[str, Script] = {}

    def __getattr__(self, name: str) -> Script:
        """The registered script ``name`` (``workers/lua/<name>.lua``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        script = self._scripts.get(name)
        if script is None:
            try:
                text = source(name)
            except FileNotFoundError:
                raise AttributeError(f"no Lua script named {name!r}") from None
            script = self._scripts[name] = self._client.register_script(text)
        return script
