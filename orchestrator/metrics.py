"""Prometheus metrics, one registry per service instance (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ingest_messages = Counter(
            "orch_ingest_messages", "Device messages applied", ["kind"], registry=r)
        self.ingest_rejected = Counter(
            "orch_ingest_rejected", "Device messages rejected, by reason", ["reason"], registry=r)
        self.ingest_batches = Counter("orch_ingest_batches", "Ingest batches written", registry=r)
        self.ingest_batch_seconds = Histogram(
            "orch_ingest_batch_seconds", "Time to write one ingest batch", registry=r)
        self.mqtt_reconnects = Counter("orch_mqtt_reconnects", "MQTT reconnects", registry=r)
        self.checks = Counter("orch_checks", "OneNET check calls, by errno (-1 transport)",
                              ["errno"], registry=r)
        self.dispatches = Counter("orch_dispatches", "Upgrade commands published", registry=r)
        self.progress = Counter("orch_progress", "Progress reports, by step", ["step"],
                                registry=r)
        self.due_backlog = Gauge("orch_due_backlog", "Devices due now and not claimed",
                                 registry=r)
        self.claim_lag = Gauge("orch_claim_lag_seconds",
                               "Age of the oldest due device at the last claim", registry=r)
        self.replicas_unhealthy = Gauge(
            "orch_replicas_unhealthy", "Replicas silent or with ingest disconnected",
            registry=r)
        self.outbox_backlog = Gauge("orch_outbox_backlog", "Commands waiting to be published",
                                    registry=r)
        self.ingest_db_retries = Counter(
            "orch_ingest_db_retries", "Ingest batches retried while the database was "
            "unavailable", registry=r)
        self.free_rechecks = Counter(
            "orch_dispatch_timeouts_not_charged",
            "Dispatch timeouts during our own outage (no retry budget spent)", registry=r)
        self.breaker_open = Gauge("orch_onenet_breaker_open",
                                  "1 while the check endpoint circuit breaker is open",
                                  registry=r)
        self.cap_waits = Counter(
            "orch_cap_waits", "Claims that waited because an in-flight cap was full",
            registry=r)
        self.in_flight = Gauge("orch_in_flight", "Devices checking or in flight, fleet-wide",
                               registry=r)
        self.max_in_flight = Gauge("orch_max_in_flight",
                                   "ORCH_MAX_IN_FLIGHT (0: no fleet-wide cap)", registry=r)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value("orch_ingest_rejected_total", {"reason": reason})
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
