"""Promoter benchmark: due jobs moved from the delayed store to their queue, per second.

Same run, same Redis: ours (``promote.lua`` in batches of 1,000, as workers run it) vs a raw
baseline that LPUSHes the same messages in pipelines of 1,000 (the floor any promoter pays).
Target: >= 10,000 jobs/s. Usage: ``python bench/promoter.py [--jobs N] [--redis-url URL]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import claimed_db, flushed_after

BATCH = 1000


def main() -> int:
    """Run both sides twice, alternating; print rates and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    options = parser.parse_args()
    with claimed_db(options.redis_url) as url:
        os.environ["JOBS_REDIS_URL"] = url
        from workers import keys  # noqa: PLC0415 - settings read the environment set above
        from workers.housekeeping import Housekeeper  # noqa: PLC0415
        from workers.job import Job  # noqa: PLC0415
        from workers.publisher import envelope  # noqa: PLC0415
        from workers.settings import get_settings  # noqa: PLC0415

        client = redis.Redis.from_url(url)
        promoter = Housekeeper(get_settings())
        promoter.connect()
        messages = [
            json.dumps(envelope(Job(id=f"j{n}", task="bench.noop", key=f"k{n}", queue="default",
                                    args=(), kwargs={"n": n})))
            for n in range(options.jobs)
        ]  # fmt: skip
        results: dict[str, list[float]] = {"ours": [], "raw": []}
        with flushed_after(client):
            for _ in range(2):
                client.flushdb()
                started = time.perf_counter()
                for start in range(0, len(messages), BATCH):
                    with client.pipeline(transaction=False) as pipe:
                        pipe.lpush("default", *messages[start : start + BATCH])
                        pipe.execute()
                results["raw"].append(options.jobs / (time.perf_counter() - started))
                assert client.llen("default") == options.jobs

                client.flushdb()
                due = time.time() - 1
                for start in range(0, len(messages), BATCH):
                    chunk = messages[start : start + BATCH]
                    client.zadd(keys.delayed(), {f"default\n{m}": due for m in chunk})
                started = time.perf_counter()
                moved = 0
                while moved < options.jobs:
                    moved += promoter.promote_due(time.time())
                results["ours"].append(options.jobs / (time.perf_counter() - started))
                assert client.llen("default") == options.jobs
                assert client.zcard(keys.delayed()) == 0
        ours, raw = max(results["ours"]), max(results["raw"])
        rounded = {side: [round(rate) for rate in rates] for side, rates in results.items()}
        print(f"promoter (promote.lua, {BATCH}/call): {ours:,.0f} jobs/s  runs: {rounded['ours']}")
        print(f"baseline (LPUSH pipeline, {BATCH}/call): {raw:,.0f} jobs/s  runs: {rounded['raw']}")
        print(f"ratio ours/baseline: {ours / raw:.2f}; target >= 10,000 jobs/s: "
              f"{'met' if ours >= 10_000 else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
