"""The workers: loops that call the domain and the ports. The scheduler claims due devices
and carries out the domain's decisions; the controller advances waves, applies abort rules
and completes campaigns; the progress sink applies device messages; outbox publishing.
No SQL and no client library here: see ``orchestrator.ports``."""
