"""Circuit-breaker policy (per destination; see issue 3). Placeholder until the breaker lands."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from workers.job import Job
    from workers.policies import Execution


class Breaker:
    """Skip calls to a destination whose breaker is open; park the job until half-open."""

    options: ClassVar[frozenset[str]] = frozenset()

    def before(self, job: Job, execution: Execution) -> None:
        """Nothing yet."""

    def after_success(self, job: Job, execution: Execution) -> None:
        """Nothing yet."""

    def after_failure(self, job: Job, execution: Execution, exc: BaseException) -> None:
        """Nothing yet."""
