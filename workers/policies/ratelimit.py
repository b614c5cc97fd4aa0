"""Rate-limit policy (cluster-wide; see issue 3). Placeholder until the limiter lands."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution


class RateLimit:
    """Take a token before running; park the job in the delayed store when there is none."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Nothing yet."""

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing yet."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Nothing yet."""
