"""The container files pass their linters offline: hadolint, and the compose spec's JSON schema.

Building and running the images needs a container engine (docker/build.sh does it with podman or
docker); these checks need none.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, urlsplit

from ruamel.yaml import YAML

from keeper.conditions import FAMILIES
from keeper.endpoints import Endpoint
from keeper.metrics import Metrics
from tests import dockerfile

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
yaml = YAML(typ="safe")


def test_dockerfiles_are_hadolint_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "docker/Dockerfile", "docker/Dockerfile.anvil"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_follows_the_compose_spec() -> None:
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker/compose.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _final_stage() -> tuple[dict[str, str], list[dockerfile.Stage]]:
    return dockerfile.stages((ROOT / "docker/Dockerfile").read_text())


def test_the_image_runs_as_non_root_with_state_on_a_volume_and_a_healthcheck() -> None:
    args, stages = _final_stage()
    build, final = stages[0], stages[-1]
    assert len(stages) == 2
    # the runtime is the same Python the project supports (requires-python) on both stages
    assert build.base == final.base == "${BASE}"
    python = re.fullmatch(r"python:(\d+)\.(\d+)-slim-bookworm", args["BASE"])
    assert python, args["BASE"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert minimum, project["requires-python"]
    assert (int(python[1]), int(python[2])) >= (int(minimum[1]), int(minimum[2]))

    # the build installs the locked dependencies
    assert any("-r requirements.lock" in i.args for i in build.all("RUN"))

    # runs as the non-root user the final stage creates, whose home is the state volume
    user = final.last("USER")
    assert user is not None
    uid = user.args.split(":")[0]
    assert uid not in ("0", "root")
    useradd = next(i.args.split() for i in final.all("RUN") if "useradd" in i.args)
    assert useradd[useradd.index("--uid") + 1] == uid
    home = useradd[useradd.index("--home-dir") + 1]

    volume = final.last("VOLUME")
    assert volume is not None
    assert volume.exec_form() == [home]
    env = final.env()
    for state in ("KEEPER_STATE_DB", "KEEPER_AUDIT_LOG"):
        assert PurePosixPath(env[state]).parent == PurePosixPath(home), state
    assert env["KEEPER_DRY_RUN"] == "1"  # a fresh container signs nothing until told to

    # the health check asks the keeper's own /health on the metrics port the image sets and exposes
    url = _health_url(final)
    assert url.hostname in ("127.0.0.1", "localhost")
    assert url.path == "/health"
    assert url.port == int(env["KEEPER_METRICS_PORT"])
    expose = final.last("EXPOSE")
    assert expose is not None
    assert str(url.port) in expose.args.split()

    # the entrypoint is the installed console script, its default command a real subcommand
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    assert entrypoint.exec_form() == ["perp-keeper"]
    assert project["scripts"]["perp-keeper"] == "keeper.cli:main"
    assert cmd.exec_form() == ["run"]


def test_copy_sources_are_in_the_build_context() -> None:
    """Every COPY source exists and is not .dockerignore'd (a renamed package would break the build)."""
    _, stages = _final_stage()
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        word
        for stage in stages
        for copy in stage.all("COPY")
        if not copy.args.startswith("--from=")
        for word in copy.args.split()[:-1]
    ]
    assert "requirements.lock" in sources
    for source in sources:  # docker/wheelhouse/ is kept (empty) in git; docker/build.sh fills it
        assert (ROOT / source).exists(), source
        assert source.rstrip("/").split("/")[0] not in ignored, source


async def test_the_health_check_command_passes_when_healthy_and_fails_when_not() -> None:
    """The HEALTHCHECK's own command, run against the keeper's metrics server (on a free port)."""
    _, stages = _final_stage()
    final = stages[-1]
    url = _health_url(final)
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    command = healthcheck.exec_form()
    assert command is not None
    assert command[0] == "python3"
    metrics = Metrics(stale_head_seconds=0)
    server = await metrics.serve(0, host="127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    local = [sys.executable, *(word.replace(f":{url.port}/", f":{port}/") for word in command[1:])]
    assert local != [sys.executable, *command[1:]]
    try:
        assert await _exit_code(local) != 0  # never ticked: 503
        metrics.ticked(head_timestamp=0)
        assert await _exit_code(local) == 0
    finally:
        server.close()
        await server.wait_closed()


def _health_url(stage: dockerfile.Stage) -> SplitResult:
    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None
    command = healthcheck.exec_form()
    assert command is not None, "HEALTHCHECK CMD in exec form"
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(command))
    assert len(urls) == 1, command
    url: str = urls[0]
    return urlsplit(url)


async def _exit_code(command: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


# --- monitoring: Prometheus rules and the Grafana dashboard (compose profile "monitoring") -----------
MONITORING = ROOT / "docker"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make tools` installs it (Debian package prometheus)"
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, check=False)


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana/dashboards/perp-keeper.json").read_text())
    assert dashboard["uid"] == "perp-keeper"
    assert dashboard["panels"]
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_alerting_rules_and_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    checked = _promtool("check", "rules", "docker/prometheus/alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # every dashboard query parsed by promtool too, as the recording rules it could be
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(json.dumps(rules))
    checked = _promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _exported_names() -> set[str]:
    metrics = Metrics()
    metrics.watch_rpc(_OneEndpoint())
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


class _OneEndpoint:
    endpoints = (Endpoint("http://x", "http://x", latency=0.1, head=1),)

    def is_healthy(self, ep: Endpoint) -> bool:
        return True


def test_rules_and_dashboard_name_only_metrics_the_keeper_exports() -> None:
    rules = (MONITORING / "prometheus/alerts.yml").read_text()
    used = set(re.findall(r"perp_keeper_[a-z_]+", rules + "\n".join(_dashboard_exprs())))
    assert used
    assert used <= _exported_names(), used - _exported_names()
    conditions = set(re.findall(r'condition="([a-z-]+)"', rules))
    assert conditions <= set(FAMILIES)


def test_the_monitoring_profile_mounts_the_rules_and_the_dashboard() -> None:
    compose = yaml.load((MONITORING / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            assert (MONITORING / volume.split(":")[0]).exists(), volume
    assert "profiles" not in services["keeper"]  # the keeper starts without the profile


def test_compose_runs_two_replicas_on_one_postgresql() -> None:
    """docker/compose.yaml: a PostgreSQL service and two keeper replicas with one database URL, each
    its own replica id, metrics port and audit volume; they start once the database is ready."""
    services = yaml.load((MONITORING / "compose.yaml").read_text())["services"]
    assert services["db"]["image"].startswith("postgres:")
    replicas = [services["keeper"], services["keeper-2"]]
    urls = {r["environment"]["KEEPER_DATABASE_URL"] for r in replicas}
    assert len(urls) == 1
    assert next(iter(urls)).startswith("postgresql://keeper:")
    assert "@db:5432/" in next(iter(urls))
    assert len({r["environment"]["KEEPER_REPLICA_ID"] for r in replicas}) == 2
    assert len({r["ports"][0].split(":")[0] for r in replicas}) == 2
    assert len({r["volumes"][0].split(":")[0] for r in replicas}) == 2
    for r in replicas:
        assert r["depends_on"]["db"]["condition"] == "service_healthy"
        assert r["command"] == services["keeper"]["command"]
