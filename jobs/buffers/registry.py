"""A buffer's ``JOBS_BUFFERS`` entry and its compiled form (row codec + flush statements)."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.buffers.rows import RowCodec
from jobs.buffers.statements import Statements, statements
from workers.errors import InvalidJob
from workers.registries import BufferSpec
from workers.settings import Settings, get_settings


def buffer_spec(name: str, settings: Settings | None = None) -> BufferSpec:
    """The ``JOBS_BUFFERS`` entry of ``name``; :class:`InvalidJob` naming the known ones if none."""
    buffers = (settings or get_settings()).buffers
    spec = buffers.get(name)
    if spec is None:
        raise InvalidJob(f"unknown write buffer {name!r}; known: {sorted(buffers)}", field="buffer")
    return spec


@dataclass(frozen=True, slots=True)
class Compiled:
    """A buffer's row codec and flush statements, built once per process and spec."""

    spec: BufferSpec
    codec: RowCodec
    statements: Statements


_compiled: dict[str, Compiled] = {}


def compiled(name: str, spec: BufferSpec) -> Compiled:
    """The :class:`Compiled` form of buffer ``name`` (rebuilt if its spec object changed)."""
    entry = _compiled.get(name)
    if entry is None or entry.spec is not spec:
        entry = _compiled[name] = Compiled(spec, RowCodec(name, spec), statements(spec))
    return entry
