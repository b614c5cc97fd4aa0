"""``jobctl webhooks``: endpoints add/list/disable/enable/rotate-secret and deliveries, run as a
real ``jobctl`` subprocess against the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from jobs.webhooks import signing, store
from workers import resources

WEBHOOK_TABLES = "TRUNCATE webhook_deliveries, webhook_messages, webhook_endpoints RESTART IDENTITY"


@pytest.fixture
def hooks(clean: tuple[Any, Any]) -> tuple[Any, Any]:
    """Empty webhook tables, dead letters and Redis."""
    clean[0].execute(WEBHOOK_TABLES)
    return clean


def jobctl(*args: str, allow: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``jobctl`` (optionally with 127.0.0.1 allow-listed) and capture its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["JOBS_WEBHOOK_ALLOW_HOSTS"] = json.dumps(["127.0.0.1"] if allow else [])
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_add_list_rotate_disable_enable_an_endpoint(hooks: Any) -> None:
    """Given jobctl, when an endpoint is added, it prints a whsec_ secret once; the listing
    never shows it; rotate-secret prints a new one and both sign during the grace period;
    disable and enable flip the active flag with the reason.
    """
    added = jobctl(
        "webhooks", "endpoints", "add", "http://127.0.0.1:8080/in",
        "-e", "order.paid", "-e", "order.refunded", "--rate", "5/s", "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    secret = created["secret"]
    signing.secret_key(secret)
    assert created["event_types"] == ["order.paid", "order.refunded"]
    assert created["rate_limit"] == "5/s"

    listed = jobctl("webhooks", "endpoints", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    [shown] = json.loads(listed.stdout)
    assert (shown["id"], shown["secrets"], shown["active"]) == (created["id"], 1, True)

    rotated = jobctl("webhooks", "endpoints", "rotate-secret", str(created["id"]), "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = json.loads(rotated.stdout)["secret"]
    assert new_secret != secret
    endpoint = store.get_endpoint(resources.engine(), created["id"])
    assert endpoint is not None
    from datetime import UTC, datetime  # noqa: PLC0415

    now = int(datetime.now(UTC).timestamp())
    valid = endpoint.valid_secrets(datetime.now(UTC))
    assert valid == [secret, new_secret]
    headers = signing.signed_headers(valid, message_id="m", timestamp=now, body=b"{}", attempt=1)
    Webhook(secret).verify(b"{}", headers)
    Webhook(new_secret).verify(b"{}", headers)

    disabled = jobctl("webhooks", "endpoints", "disable", str(created["id"]), "--reason", "moved")
    assert disabled.returncode == 0, disabled.stderr
    [shown] = json.loads(jobctl("webhooks", "endpoints", "list", "--json").stdout)
    assert (shown["active"], shown["disabled_reason"]) == (False, "moved")
    assert jobctl("webhooks", "endpoints", "enable", str(created["id"])).returncode == 0
    assert json.loads(jobctl("webhooks", "endpoints", "list", "--active", "--json").stdout)


def test_rotation_without_grace_retires_the_old_secret_at_once(hooks: Any) -> None:
    """Given an endpoint, when its secret is rotated with --grace 0s, then only the new secret
    signs.
    """
    added = jobctl("webhooks", "endpoints", "add", "http://127.0.0.1:8080/in", "--json")
    created = json.loads(added.stdout)
    rotated = jobctl(
        "webhooks", "endpoints", "rotate-secret", str(created["id"]), "--grace", "0s", "--json"
    )
    assert rotated.returncode == 0, rotated.stderr
    endpoint = store.get_endpoint(resources.engine(), created["id"])
    assert endpoint is not None
    from datetime import UTC, datetime  # noqa: PLC0415

    assert endpoint.valid_secrets(datetime.now(UTC)) == [json.loads(rotated.stdout)["secret"]]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/in", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://example.com@127.0.0.1/", "ssrf_blocked"),
        ("ftp://example.com/in", "ssrf_blocked"),
        ("http://[::1]:8080/", "ssrf_blocked"),
    ],
)
def test_add_refuses_internal_urls_without_the_allow_list(hooks: Any, url: str, why: str) -> None:
    """Given no allow-list, when an internal or malformed URL is added, then jobctl exits 2
    with a one-line ssrf_blocked error and stores nothing.
    """
    result = jobctl("webhooks", "endpoints", "add", url, allow=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert why in result.stderr
    assert "Traceback" not in result.stderr
    assert store.list_endpoints(resources.engine()) == []


def test_bad_options_name_the_field(hooks: Any) -> None:
    """Given a bad rate or event type, when an endpoint is added, then the error names it."""
    rate = jobctl("webhooks", "endpoints", "add", "http://127.0.0.1:8080/", "--rate", "fast")
    assert rate.returncode == 2
    assert "rate_limit" in rate.stderr
    event = jobctl("webhooks", "endpoints", "add", "http://127.0.0.1:8080/", "-e", "a b")
    assert event.returncode == 2
    assert "event_types" in event.stderr


def test_deliveries_filter_by_endpoint_and_status(hooks: Any) -> None:
    """Given deliveries of two endpoints in different states, when listed with --endpoint and
    --status, then only the matching rows come back; a bad status is refused.
    """
    engine = resources.engine()
    first, _ = store.add_endpoint(engine, url="http://127.0.0.1:8080/a")
    second, _ = store.add_endpoint(engine, url="http://127.0.0.1:8080/b")
    with engine.begin() as conn:
        store.store_message(conn, event_id="e1", event_type="t", body=b"{}")
        store.store_deliveries(conn, "e1", [first.id, second.id])
    [row] = store.list_deliveries(engine, endpoint_id=first.id)
    store.record_attempt(
        engine,
        row["id"],
        attempt=1,
        status=store.Status.FAILED,
        status_code=400,
        error="receiver answered 400",
        duration_ms=3,
    )
    failed = jobctl("webhooks", "deliveries", "--status", "failed", "--json")
    assert failed.returncode == 0, failed.stderr
    assert [(r["endpoint_id"], r["last_status_code"]) for r in json.loads(failed.stdout)] == [
        (first.id, 400)
    ]
    pending = json.loads(
        jobctl("webhooks", "deliveries", "--endpoint", str(second.id), "--json").stdout
    )
    assert [(r["endpoint_id"], r["status"]) for r in pending] == [(second.id, "pending")]
    table = jobctl("webhooks", "deliveries")
    assert "receiver answered 400" in table.stdout
    bad = jobctl("webhooks", "deliveries", "--status", "lost")
    assert bad.returncode == 2
    assert "pending, retrying, delivered" in bad.stderr
