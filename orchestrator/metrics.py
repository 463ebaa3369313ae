"""Prometheus metrics, one registry per service instance (tests run several)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ingest_messages = Counter(
            "orch_ingest_messages", "Device messages applied", ["kind"], registry=r)
        self.ingest_rejected = Counter(
            "orch_ingest_rejected", "Device messages rejected, by reason", ["reason"], registry=r)
        self.ingest_noted = Counter(
            "orch_ingest_noted", "Device messages applied with a note, by reason "
            "(unknown_module: registered, left out of campaigns)", ["reason"], registry=r)
        self.ingest_batches = Counter("orch_ingest_batches", "Ingest batches written", registry=r)
        self.ingest_batch_seconds = Histogram(
            "orch_ingest_batch_seconds", "Time to write one ingest batch", registry=r)
        self.mqtt_reconnects = Counter("orch_mqtt_reconnects", "MQTT reconnects", registry=r)
        self.mqtt_subscribe_refused = Counter(
            "orch_mqtt_subscribe_refused", "Ingest subscriptions the broker refused (its ACL "
            "does not let our account read the topic): nothing arrives", ["topic"],
            registry=r)
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
        self.held = Counter(
            "orch_gate_holds", "Devices held to a likelier hour instead of a check their "
            "fresh report would fail (radio-aware gating)", registry=r)
        self.cell_waits = Counter(
            "orch_cell_waits", "Claimed devices sent back to wait: their cell had its cap of "
            "downloads in flight", registry=r)
        self.in_flight = Gauge("orch_in_flight", "Devices checking or in flight, fleet-wide",
                               registry=r)
        self.max_in_flight = Gauge("orch_max_in_flight",
                                   "ORCH_MAX_IN_FLIGHT (0: no fleet-wide cap)", registry=r)
        self.controller_leader = Gauge(
            "orch_controller_leader", "1 on the replica holding the controller lock", registry=r)
        self.relays = Counter(
            "orch_relays", "Progress steps relayed to OneNET, by outcome (sent, retried, "
            "dropped after RELAY_GIVE_UP_AFTER tries with no answer)", ["outcome"], registry=r)
        self.rule_actions = Counter(
            "orch_campaign_rule_actions", "Campaigns paused or aborted by a rule",
            ["rule", "action"], registry=r)
        # per running campaign, exported by the controller-lock holder only
        self.campaign_devices = Gauge("orch_campaign_devices",
                                      "Devices of a running campaign, by state",
                                      ["campaign", "state"], registry=r)
        self.campaign_remaining = Gauge("orch_campaign_remaining",
                                        "Devices of a running campaign still to go through",
                                        ["campaign"], registry=r)
        self.campaign_finished = Gauge("orch_campaign_finished",
                                       "Devices of a running campaign done (any end state)",
                                       ["campaign"], registry=r)
        self.campaign_rate = Gauge("orch_campaign_rate_per_minute",
                                   "Devices finished per minute, last 10 minutes",
                                   ["campaign"], registry=r)
        self.campaign_window_open = Gauge(
            "orch_campaign_window_open", "1 while the campaign's maintenance windows are open",
            ["campaign"], registry=r)
        self.campaign_eta = Gauge("orch_campaign_eta_seconds",
                                  "Seconds until the campaign's ETA", ["campaign"], registry=r)

        self._campaigns: set[str] = set()

    def campaign(self, campaign_id: int, by_state: dict[str, int], remaining: int,
                 finished: int, rate: float | None, window_open: bool,
                 eta_in: float | None) -> None:
        cid = str(campaign_id)
        self._campaigns.add(cid)
        for state, n in by_state.items():
            self.campaign_devices.labels(cid, state).set(n)
        self.campaign_remaining.labels(cid).set(remaining)
        self.campaign_finished.labels(cid).set(finished)
        self.campaign_rate.labels(cid).set(rate if rate is not None else float("nan"))
        self.campaign_window_open.labels(cid).set(1 if window_open else 0)
        self.campaign_eta.labels(cid).set(eta_in if eta_in is not None else float("nan"))

    def forget_campaigns(self, keep: set[int], states: tuple[str, ...]) -> None:
        """Drop the series of campaigns not in ``keep`` (ended, or no longer ours)."""
        for cid in self._campaigns - {str(k) for k in keep}:
            for gauge in (self.campaign_remaining, self.campaign_finished, self.campaign_rate,
                          self.campaign_window_open, self.campaign_eta):
                gauge.remove(cid)
            for state in states:
                with contextlib.suppress(KeyError):
                    self.campaign_devices.remove(cid, state)
            self._campaigns.discard(cid)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value("orch_ingest_rejected_total", {"reason": reason})
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
