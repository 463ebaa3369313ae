"""``orchestrator bench``: this system's throughput beside the raw limit measured in the same
run on the same machine, as a ratio. Each prints a table, then one line of JSON. One module
per bench; the ingest load generator runs in a process of its own (``load``)."""

from __future__ import annotations

from orchestrator import runtime
from orchestrator.config import Settings
from orchestrator.tools.bench.campaign import bench_campaign
from orchestrator.tools.bench.checks import bench_checks
from orchestrator.tools.bench.credentials import bench_credentials
from orchestrator.tools.bench.enroll import bench_enroll
from orchestrator.tools.bench.ingest import bench_ingest
from orchestrator.tools.bench.radio import bench_radio
from orchestrator.tools.bench.rehearse import bench_rehearse, bench_rehearse_vs_real
from orchestrator.tools.bench.scale import bench_scale

BENCHES = {"ingest": bench_ingest, "checks": bench_checks, "enroll": bench_enroll,
           "campaign": bench_campaign, "credentials": bench_credentials, "radio": bench_radio,
           "scale": bench_scale, "rehearse": bench_rehearse,
           "rehearse-vs-real": bench_rehearse_vs_real}


def run_bench(name: str, settings: Settings, size: int | None) -> int:
    fn = BENCHES[name]

    def say(text: str) -> None:
        print(text, flush=True)

    kwargs = {"n": size} if size else {}
    runtime.run(fn(settings, say, **kwargs))
    return 0
