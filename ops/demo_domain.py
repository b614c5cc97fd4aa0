"""``jobctl demo``, phases 4 to 8: the data workloads and webhooks, on the demo's worker.

4. Partitions: :func:`jobs.partitions.ensure_all` for now and for the first day of the events
   below (a week that starts in the previous month gets that month's partition), then the list.
5. Events through the write buffer: 20,000 rows over the last 7 days (``created_at`` set,
   today included) appended with ``WriteBuffer("events").extend``, a ``buffers.flush`` job,
   and a wait until exactly that many rows are in ``events`` (none in its DEFAULT partition).
6. ``views.refresh`` of ``mv_daily_stats``: wait for its recorded success, show the days and
   the staleness.
7. ``cache.warm`` of ``daily_stats``: wait for one key per day, then read today's through
   :func:`jobs.cache.get_or_load` and show it came from the cache (the loader never ran).
8. Webhooks: a local receiver (:mod:`ops.demo_receiver`) verifies every signature; one
   endpoint; ``order.paid`` for 10 charged orders; the first request of one is answered 503,
   so exactly one delivery is retried; wait until all are delivered.

Every wait has a deadline (:data:`PHASE_TIMEOUT`) and fails at once if the worker exits.
Imported by :mod:`ops.demo` only once the environment points at the demo's services: the
``jobs`` modules read the settings at import.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.table import Table
from sqlalchemy import select, text

import jobs
from jobs import buffers, cache, partitions, views, webhooks
from jobs.webhooks import store as webhook_store
from ops.demo import DemoError, wait_until
from ops.demo_receiver import VERIFIER, DemoReceiver
from workers import resources
from workers.db import demo_payments
from workers.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from ops.demo import Demo

#: Events written through the write buffer, and the days (today included) they spread over.
DEFAULT_EVENTS = 20_000
DAYS = 7
#: Distinct users the events come from.
USERS = 2_000
#: Event types and their weights (``purchase`` rows carry ``{"amount": n}``).
EVENT_MIX = {"view": 80, "signup": 5, "purchase": 15}
#: Orders whose ``order.paid`` webhook the demo publishes.
DEFAULT_WEBHOOKS = 10
#: Seconds each wait of these phases may take.
PHASE_TIMEOUT = 30.0
TABLE = "events"
BUFFER = "events"
VIEW = "mv_daily_stats"
WARMER = "daily_stats"
EVENT_TYPE = "order.paid"

_PARTITIONS = text(
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:table AS regclass)"
    " ORDER BY c.relname"
)
_ROWS_PER_PARTITION = text(
    "SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1 ORDER BY 1"
)
_VIEW_ROWS = text(
    "SELECT day, unique_users, total_events, purchases, revenue, conversion_rate"
    " FROM mv_daily_stats ORDER BY day"
)
_DAY_STATS = text(
    "SELECT day, unique_users, total_events, purchases, revenue, signups, conversion_rate"
    " FROM mv_daily_stats WHERE day = :day"
)


@dataclass(slots=True)
class DataSummary:
    """What phases 4 to 8 did, counted from PostgreSQL, Redis and the receiver."""

    partitions: int = 0
    events_written: int = 0
    view_days: int = 0
    cache_keys: int = 0
    cache_hits: int = 0
    webhooks_published: int = 0
    webhooks_delivered: int = 0
    webhook_requests: int = 0
    webhooks_retried: int = 0
    signatures_verified: int = 0

    def rows(self) -> list[tuple[str, int]]:
        """``(label, count)`` rows of the summary table."""
        return [
            ("partitions of events (DEFAULT included)", self.partitions),
            ("events buffered, then flushed to PostgreSQL", self.events_written),
            ("mv_daily_stats days after views.refresh", self.view_days),
            ("cache keys warmed (stats:daily:<day>)", self.cache_keys),
            ("cache reads served from cache (loader not called)", self.cache_hits),
            (f"webhooks published ({EVENT_TYPE})", self.webhooks_published),
            ("webhooks delivered", self.webhooks_delivered),
            ("webhook requests (attempts)", self.webhook_requests),
            ("webhook deliveries retried after a 503", self.webhooks_retried),
            ("webhook signatures verified", self.signatures_verified),
        ]


def plan_events(
    count: int, *, now: datetime, days: int = DAYS, users: int = USERS, seed: int = 5
) -> list[dict[str, Any]]:
    """``count`` buffer rows spread evenly over the ``days`` days up to ``now`` (UTC).

    Deterministic for a given ``now``: each day gets ``count // days`` rows or one more;
    today's fall between midnight and ``now``. Purchases carry ``{"amount": 5..250}``.
    """
    rng = random.Random(seed)  # noqa: S311 - demo data, not secrets
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    kinds, weights = list(EVENT_MIX), list(EVENT_MIX.values())
    rows = []
    for index in range(count):
        start = today - timedelta(days=days - 1 - index % days)
        span = (now - start).total_seconds() if start == today else 86_400.0
        kind = rng.choices(kinds, weights)[0]
        rows.append(
            {
                "user_id": rng.randint(1, users),
                "event_type": kind,
                "payload": {"amount": rng.randint(5, 250)} if kind == "purchase" else {},
                "created_at": start + timedelta(seconds=rng.uniform(0, span)),
            }
        )
    return rows


class DataDemo:
    """Phases 4 to 8 of one demo run; :meth:`run` returns their summary."""

    def __init__(
        self, demo: Demo, *, events: int = DEFAULT_EVENTS, orders: int = DEFAULT_WEBHOOKS
    ) -> None:
        """Bind to the running demo (its console, waits and worker)."""
        self.demo = demo
        self.console = demo.console
        self.engine = resources.engine()
        self.events, self.orders = events, orders
        self.now = datetime.now(UTC)
        self.days = [(self.now - timedelta(days=n)).date() for n in range(DAYS - 1, -1, -1)]
        self.summary = DataSummary()
        # The console tells what the jobs modules log at INFO in this process (the worker's
        # log keeps everything); their warnings still show.
        logging.getLogger("jobs").setLevel(logging.WARNING)

    def run(self) -> DataSummary:
        """Run the phases in order; raises :class:`DemoError` when one misses its outcome."""
        self._partitions()
        self._buffer()
        self._view()
        self._cache()
        self._webhooks()
        return self.summary

    # -- phases ----------------------------------------------------------------------------

    def _partitions(self) -> None:
        self.console.rule("[bold]4. Partitions")
        first = datetime(self.days[0].year, self.days[0].month, self.days[0].day, tzinfo=UTC)
        results = [*partitions.ensure_all(clock=lambda: first), *partitions.ensure_all()]
        created = [name for result in results for name in result.created]
        spec = partitions.spec_for(TABLE)
        default = (
            ", with a DEFAULT partition for rows outside every range"
            if spec.default_partition
            else ""
        )
        self.console.print(
            f"partitions.ensure_all() for now and for {first.date()} (the first day of the "
            f"events below): created {', '.join(created) or 'none (all existed)'}. {TABLE} is "
            f"partitioned by {spec.interval} on {spec.column}, {spec.premake} ahead{default}:"
        )
        with self.engine.connect() as conn:
            found = [(str(n), str(b)) for n, b in conn.execute(_PARTITIONS, {"table": TABLE})]
        for name, bound in found:
            start, end = partitions.parse_bound(bound) or (None, None)
            if start is None or end is None:
                self.console.print(f"  • {name}  DEFAULT")
                continue
            days = [day for day in self.days if start.date() <= day < end.date()]
            holds = f" ← events of {days[0]} to {days[-1]}" if days else ""
            self.console.print(f"  • {name}  [{start.date()}, {end.date()}){holds}")
        self.summary.partitions = len(found)

    def _buffer(self) -> None:
        self.console.rule("[bold]5. Events through the write buffer")
        rows = plan_events(self.events, now=self.now)
        kinds = Counter(row["event_type"] for row in rows)
        buffer = buffers.WriteBuffer(BUFFER)
        started = time.monotonic()
        length = buffer.extend(rows)
        self.console.print(
            f"WriteBuffer({BUFFER!r}).extend: {len(rows):,} events "
            f"({', '.join(f'{n:,} {kind}' for kind, n in kinds.most_common())}) from "
            f"{self.days[0]} to {self.days[-1]}, created_at set, validated and pushed to Redis in "
            f"{time.monotonic() - started:.2f}s (one transaction); buffer length {length:,}."
        )
        ref = jobs.enqueue(buffers.flush_buffer, buffer=BUFFER)
        threshold = buffer.spec.flush_threshold
        asked = (
            f"; the append itself asked for one at {threshold:,} rows"
            if length >= threshold
            else ""
        )
        self.console.print(
            f"Enqueued buffers.flush (queue buffers, job {ref.id[:8]}){asked}. Each flush claims "
            f"batches of {buffer.spec.batch_size:,} rows and writes each with COPY + INSERT in one "
            "transaction, removing it from Redis only after the commit."
        )
        self.demo.progress(
            "Flushing", len(rows), self._event_count, what="events", timeout=PHASE_TIMEOUT
        )
        self._wait(lambda: buffers.buffer_stats(BUFFER).length == 0, "the write buffer to drain")
        with self.engine.connect() as conn:
            per_partition = {str(name): int(n) for name, n in conn.execute(_ROWS_PER_PARTITION)}
        written = sum(per_partition.values())
        default_rows = partitions.default_partition_rows(TABLE)
        if written != len(rows) or default_rows:
            raise DemoError(
                f"expected {len(rows):,} rows in {TABLE} and none in its DEFAULT partition, "
                f"found {per_partition}"
            )
        self.summary.events_written = written
        self.console.print(
            f"{written:,} rows in PostgreSQL {time.monotonic() - started:.1f}s after the append, "
            f"each once: {', '.join(f'{n:,} in {name}' for name, n in per_partition.items())}"
            f"; {default_rows} in {partitions.default_partition_name(TABLE)}; buffer empty."
        )

    def _view(self) -> None:
        self.console.rule("[bold]6. Materialized view")
        before = len(self._view_rows())
        jobs.enqueue(views.refresh, view=VIEW)
        self.console.print(
            f"{VIEW} shows {before} days before its refresh (a snapshot: the new rows are not in "
            "it yet). Enqueued views.refresh (queue maintenance: single-flight per view)…"
        )
        self._wait(self._refreshed, f"views.refresh of {VIEW} to succeed")
        rows = self._view_rows()
        table = Table(title=VIEW, header_style="bold")
        for column in ("day", "users", "events", "purchases", "revenue", "conversion"):
            table.add_column(column, justify="left" if column == "day" else "right")
        for day, users, events, purchases, revenue, conversion in rows:
            table.add_row(
                str(day), f"{users:,}", f"{events:,}", f"{purchases:,}", f"{revenue:,}",
                f"{float(conversion):.1%}",
            )  # fmt: skip
        self.console.print(table)
        total = sum(int(row[2]) for row in rows)
        if total != self.summary.events_written:
            raise DemoError(f"{VIEW} counts {total:,} events, {TABLE} holds {self.events:,}")
        state = views.view_state(VIEW)
        stale = views.staleness(VIEW)
        mode = "concurrently" if state is not None and state.last_concurrently else "in full"
        took = state.last_duration_ms if state is not None and state.last_duration_ms else 0.0
        self.console.print(
            f"Refreshed {mode} in {took:.0f} ms; staleness {stale or 0.0:.1f}s (seconds since "
            "the last success in view_refresh_state; beat refreshes it every "
            f"{views.spec_for(VIEW).interval:.0f} s)."
        )
        self.summary.view_days = len(rows)

    def _cache(self) -> None:
        self.console.rule("[bold]7. Cache warming")
        spec = get_settings().warmers[WARMER]
        keys = [spec.key_template.format(day=day.isoformat()) for day in self.days]
        jobs.enqueue(cache.warm, warmer=WARMER)
        self.console.print(
            f"Enqueued cache.warm (queue cache) of warmer {WARMER!r}: it lists the days of {VIEW} "
            f"and fans out cache.load jobs writing {spec.key_template} (TTL {spec.ttl:.0f} s, "
            "versioned compare-and-set)."
        )
        self.demo.progress(
            "Warming",
            len(keys),
            lambda: sum(cache.get(key) is not None for key in keys),
            what="cache keys",
            timeout=PHASE_TIMEOUT,
        )
        self.summary.cache_keys = len(keys)
        today, key = self.days[-1], keys[-1]
        cached = cache.get(key)
        loads: list[date] = []

        def loader() -> dict[str, Any] | None:
            loads.append(today)
            return self._day_stats(today)

        value = cache.get_or_load(key, loader, ttl=spec.ttl)
        if cached is None or loads or value != cached.value:
            raise DemoError(f"get_or_load({key!r}) did not come from the cache")
        self.summary.cache_hits = 1
        self.console.print(
            f"cache.get_or_load({key!r}) → from the cache (version {cached.version}, "
            f"{'fresh' if cached.fresh else 'stale'}; the loader was not called):"
        )
        self.console.print(f"  {json.dumps(value)}", highlight=False)

    def _webhooks(self) -> None:
        self.console.rule("[bold]8. Webhooks")
        settings = get_settings()
        with self.engine.connect() as conn:
            orders = [
                (int(order_id), int(cents))
                for order_id, cents in conn.execute(
                    select(demo_payments.c.order_id, demo_payments.c.amount_cents)
                    .order_by(demo_payments.c.order_id)
                    .limit(self.orders)
                )
            ]
        event_ids = [f"order-{order_id}-paid" for order_id, _ in orders]
        self.console.print(
            f"JOBS_WEBHOOK_ALLOW_HOSTS={list(settings.webhook_allow_hosts)} is a development "
            "allow-list (the SSRF guard refuses loopback and private addresses otherwise: never "
            "in production); JOBS_WEBHOOK_RETRY_SCHEDULE="
            f"{list(settings.webhook_retry_schedule)} s (production: 5 s, 5 min, 30 min, …)."
        )
        with DemoReceiver(fail_first=event_ids[:1]) as receiver:
            endpoint, secret = webhooks.add_endpoint(
                receiver.url, event_types=[EVENT_TYPE], description="jobctl demo receiver"
            )
            receiver.trust(secret)
            self.console.print(
                f"Receiver on {receiver.url} (a thread of this process) verifies every signature "
                f"with {VERIFIER}; endpoint {endpoint.id} subscribes to {EVENT_TYPE} (its whsec_ "
                f"secret is shown once: the receiver keeps it). It answers 503 to the first "
                f"request of {event_ids[0]}."
            )
            for (order_id, cents), event_id in zip(orders, event_ids, strict=True):
                webhooks.publish(
                    EVENT_TYPE,
                    {"order_id": order_id, "amount": f"{cents / 100:.2f}", "currency": "EUR"},
                    event_id=event_id,
                )
            self.summary.webhooks_published = len(event_ids)
            self.console.print(
                f"Published {len(event_ids)} {EVENT_TYPE} events (webhooks.publish)."
            )
            self.demo.progress(
                "Delivering",
                len(event_ids),
                self._delivered,
                what="webhooks",
                timeout=PHASE_TIMEOUT,
            )
            received = receiver.received()
        deliveries = webhook_store.list_deliveries(
            self.engine, endpoint_id=endpoint.id, limit=len(event_ids) + 1
        )
        self.summary.webhooks_delivered = sum(d["status"] == "delivered" for d in deliveries)
        self.summary.webhook_requests = len(received)
        self.summary.webhooks_retried = sum(d["attempts"] > 1 for d in deliveries)
        self.summary.signatures_verified = sum(r.verified for r in received)
        attempts = sum(int(d["attempts"]) for d in deliveries)
        self.console.print(
            f"{self.summary.webhooks_delivered} of {len(event_ids)} delivered in {attempts} "
            f"attempts ({len(received)} requests received, {self.summary.signatures_verified} "
            "signatures verified)."
        )
        first = [r for r in received if r.event_id == event_ids[0]]
        if len(first) >= 2:  # noqa: PLR2004 - the failed attempt and its retry
            self.console.print(
                f"{event_ids[0]}: attempt {first[0].attempt} → {first[0].status}, attempt "
                f"{first[1].attempt} → {first[1].status} {first[1].at - first[0].at:.1f}s later "
                "(the retry schedule; same webhook-id, so a receiver de-duplicates on it)."
            )

    # -- helpers ---------------------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        wait_until(condition, what, timeout=PHASE_TIMEOUT, on_tick=self.demo.check_worker)

    def _event_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())

    def _view_rows(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(_VIEW_ROWS)]

    def _day_stats(self, day: date) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_DAY_STATS, {"day": day}).mappings().first()
        return cache.plain(dict(row)) if row is not None else None

    def _refreshed(self) -> bool:
        state = views.view_state(VIEW)
        return state is not None and state.last_success_at is not None

    def _delivered(self) -> int:
        counts = webhook_store.delivery_counts(self.engine)
        if counts.get("failed"):
            failed = webhook_store.list_deliveries(
                self.engine, status=webhook_store.Status.FAILED, limit=1
            )
            raise DemoError(f"a webhook delivery failed: {failed[0].get('last_error')}")
        return counts.get("delivered", 0)
