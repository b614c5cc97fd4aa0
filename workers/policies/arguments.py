"""Arguments policy: a message whose arguments do not bind to the task is dead, not retried."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, ClassVar

from workers.errors import InvalidArguments

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution


class Arguments:
    """Bind the message's args/kwargs to the task signature before anything else happens."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Raise :class:`InvalidArguments` (→ dead letter ``invalid_args``) when they don't bind."""
        try:
            inspect.signature(execution.func).bind(*job.args, **job.kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"arguments do not match {job.task}: {exc}") from None

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing to do."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Nothing to do."""
