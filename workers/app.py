"""The Celery app: JSON only, late acks, reliable Redis transport, explicit task catalogue."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from workers import logs
from workers.queues import QUEUE_NAMES, declarations
from workers.settings import Settings, get_settings

#: The task catalogue: modules registered by string (imported by the worker, not by us).
CATALOGUE = (
    "jobs.demo",
    "jobs.partitions",
    "jobs.views",
    "jobs.buffers.tasks",
    "jobs.cache.tasks",
    "jobs.webhooks.tasks",
    "workers.envelope_task",
)


class BrokerSafetyStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Refuse to start against a Redis that may evict queue keys."""

    def start(self, worker: Any) -> None:  # noqa: ARG002 - bootstep signature
        """Check ``maxmemory-policy`` (raises :class:`workers.errors.UnsafeBroker`)."""
        from workers.resources import check_broker_safety, make_redis  # noqa: PLC0415

        settings = get_settings()
        if settings.broker_is_redis:
            check_broker_safety(make_redis(settings.effective_broker_url, settings), settings)


class HousekeepingStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs :class:`workers.housekeeping.Housekeeper` in the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        """Only with a Redis broker (the delayed store and in-flight hashes live there)."""
        super().__init__(worker, **kwargs)
        self.housekeeper: Any = None

    def start(self, worker: Any) -> None:  # noqa: ARG002 - bootstep signature
        """Start the thread."""
        from workers.housekeeping import Housekeeper  # noqa: PLC0415 - worker-only import

        settings = get_settings()
        if settings.broker_is_redis:
            self.housekeeper = Housekeeper(settings)
            self.housekeeper.start()

    def stop(self, worker: Any) -> None:  # noqa: ARG002 - bootstep signature
        """Stop the thread."""
        if self.housekeeper is not None:
            self.housekeeper.stop()


def configure(app: Celery, settings: Settings) -> None:
    """Apply our defaults to ``app`` (once; per-task options only for deviations)."""
    transport_options: dict[str, Any] = {
        "socket_timeout": 10,  # above brpop_timeout; producers use our own 1 s client
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Recovery is heartbeat-based (housekeeping); kombu's visibility scan is disabled.
        "visibility_timeout": 7 * 86400,
        **settings.broker_transport_options,
    }
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.redis_connect_timeout,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Our tasks never fail from Celery's point of view (the runner stores an outcome), so
        # "failure" means a lost worker (requeued) and a hard time limit must requeue too:
        # stock Celery would acknowledge, i.e. drop, a job its child was killed for.
        task_acks_on_failure=True,
        task_acks_on_timeout=False,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_queues=declarations(),
        task_default_queue="default",
        task_create_missing_queues=False,
        task_time_limit=settings.time_limit,
        task_soft_time_limit=settings.time_limit * 0.9,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_consumer="workers.consumer:JobsConsumer",
        worker_pool="workers.pool:TaskPool",  # what ``-P prefork`` (the default) starts
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
        timezone="UTC",
    )
    if settings.broker_is_redis:
        app.conf.broker_transport = "workers.transport:ReliableRedisTransport"


def create_app(settings: Settings | None = None) -> Celery:
    """Build the app from ``settings`` (the environment by default)."""
    settings = settings or get_settings()
    app = Celery(
        "jobs",
        include=[*CATALOGUE, *settings.extra_task_modules],
        task_cls="workers.task:JobTask",
    )
    configure(app, settings)
    logs.configure(settings)
    app.steps["worker"].add(BrokerSafetyStep)
    app.steps["worker"].add(HousekeepingStep)
    import workers.signals  # noqa: F401, PLC0415 - connects observers

    return app


#: The process's app. Workers start it with ``celery -A workers.app worker``.
app = create_app()

__all__ = ["CATALOGUE", "QUEUE_NAMES", "app", "create_app"]
