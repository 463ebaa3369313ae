"""The README and docs/ lead with examples: every shell block marked ``<!-- runnable -->``
runs here, in order per page, against the real services (a database of its own, the test
broker, a topic prefix of its own), so no example rots. And the pages hold together: every
relative link resolves, the README stays short, every setting is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MQTT_URL
from orchestrator.config import _PARSERS, env_name, parse_mqtt_url

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- runnable -->\n```(?:sh|bash)\n(.*?)```", re.DOTALL)


def runnable(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


WITH_EXAMPLES = [p for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", WITH_EXAMPLES, ids=[p.name for p in WITH_EXAMPLES])
def test_the_runnable_examples_run(page: Path, database: str, prefix: str,
                                   tmp_path: Path) -> None:
    mqtt = parse_mqtt_url(MQTT_URL)
    env = {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_MQTT_URL": MQTT_URL,
           "ORCH_MQTT_TOPIC_PREFIX": prefix, "ORCH_LOG_FORMAT": "json",
           "MQTT_HOST": mqtt.host, "MQTT_PORT": str(mqtt.port),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    script = "\n".join(runnable(page))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{page.name}:\n{script}\n--- stdout\n{out.stdout[-3000:]}" \
                                f"\n--- stderr\n{out.stderr[-3000:]}"


def test_every_page_has_a_runnable_example_or_says_why() -> None:
    """Pages for people who run things lead with something to run."""
    for name in ("operators.md", "devices.md", "security.md", "dashboards.md",
                 "deployment.md"):
        assert runnable(ROOT / "docs" / name), name


def test_relative_links_resolve() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_leads_with_examples_and_stays_short() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    assert text.index("./scripts/demo") < text.index("## Operators")
    for page in ("operators", "devices", "security", "dashboards", "deployment",
                 "benchmarks", "faults", "architecture"):
        assert f"docs/{page}.md" in text, page


def test_every_setting_is_documented_once_in_the_deployment_page() -> None:
    table = (ROOT / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"`(ORCH_[A-Z0-9_]+)`", table))
    settings = {env_name(k) for k in _PARSERS}
    assert settings <= documented, sorted(settings - documented)
