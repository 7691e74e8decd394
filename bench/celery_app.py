"""The Celery side of the benchmark: one app on the benchmark's private Redis (broker and
result backend both), with no-op and sleep tasks equivalent to dago's ``echo`` and
``sleep`` tools. Settings are Celery's defaults except what a fair comparison needs
(JSON like dago, prefetch like dago's batch reads, no per-task events)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=16,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(*args: Any, **kwargs: Any) -> Any:
    """The equivalent of dago's ``echo`` tool: returns its arguments."""
    return kwargs or (args[0] if args else None)


@app.task(name="bench.sleep")
def sleep(seconds: float) -> dict[str, float]:
    """The equivalent of dago's ``sleep`` tool."""
    time.sleep(seconds)
    return {"slept": seconds}
