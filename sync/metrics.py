"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint.

Each service gets its own registry, so several services in one process (tests, the
benchmark) never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_claimed = Counter(
            "stepsync_steps_claimed", "Step attempts claimed by this worker.", registry=r
        )
        self.steps_handed_off = Counter(
            "stepsync_steps_handed_off",
            "Steps leased to this worker with the result of the step before them (no claim).",
            registry=r,
        )
        self.steps_completed = Counter(
            "stepsync_steps_completed", "Step attempts completed and committed.", registry=r
        )
        self.steps_failed = Counter(
            "stepsync_steps_failed", "Step attempts that failed for good.", registry=r
        )
        self.steps_retried = Counter(
            "stepsync_steps_retried",
            "Step attempts that failed and were queued again.",
            registry=r,
        )
        self.steps_stale = Counter(
            "stepsync_steps_stale",
            "Results refused because the lease was lost (fencing token).",
            registry=r,
        )
        self.steps_released = Counter(
            "stepsync_steps_released", "Steps handed back on shutdown.", registry=r
        )
        self.step_duration = Histogram(
            "stepsync_step_duration_seconds",
            "Executor time of one step attempt, by outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "stepsync_queue_depth", "Steps queued and due, at the reaper's last tick.", registry=r
        )
        self.steps_running = Gauge(
            "stepsync_steps_running", "Step attempts running in this worker.", registry=r
        )
        self.wakeup_latency = Histogram(
            "stepsync_wakeup_latency_seconds",
            "From a wake-up to the claim it caused returning, by wake-up reason.",
            ["reason"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.leases_reaped = Counter(
            "stepsync_leases_reaped",
            "Expired leases handed back by this worker's reaper.",
            registry=r,
        )
        self.schedule_fires = Counter(
            "stepsync_schedule_fires",
            "Fire times of scheduled tasks decided by this worker's scheduler, by outcome "
            "(started, skipped, already_run, completed, refused).",
            ["outcome"],
            registry=r,
        )


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 ok / 503) on a thread."""

    def __init__(self, metrics: Metrics, healthy: Callable[[], bool], host: str, port: int) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    ok = healthy()
                    body = b"ok\n" if ok else b"unhealthy\n"
                    ctype, code = "text/plain; charset=utf-8", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain; charset=utf-8", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None  # scrapes every few seconds would drown the service's own logs

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="stepsync-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
