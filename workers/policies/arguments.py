"""Arguments policy: a message whose arguments do not bind to the task is dead, not retried."""

from __future__ import annotations

import inspect
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from workers.errors import InvalidArguments

if TYPE_CHECKING:
    from collections.abc import Callable

    from workers.job import Job
    from workers.policies import Execution


@cache
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def bind_arguments(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` when ``args``/``kwargs`` do not fit ``func`` (signature cached)."""
    _signature(func).bind(*args, **kwargs)


class Arguments:
    """Bind the message's args/kwargs to the task signature before anything else happens."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Raise :class:`InvalidArguments` (→ dead letter ``invalid_args``) when they don't bind."""
        try:
            bind_arguments(execution.func, job.args, job.kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"arguments do not match {job.task}: {exc}") from None

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing to do."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Nothing to do."""
