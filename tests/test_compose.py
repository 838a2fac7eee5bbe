"""compose.yaml stays runnable: valid YAML, the services the README names, and only commands the
CLI really has, with a config that loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from commands.main import build_parser
from trackpipe.config import load
from workers.runner import parse_queues

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"valkey", "edge", "console", "ingest-worker", "delivery-worker"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_is_yaml_with_the_services_the_readme_names() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    readme = (ROOT / "README.md").read_text()
    for name in SERVICES:
        assert f"`{name}`" in readme, f"README does not mention the {name} service"


@pytest.mark.parametrize("service", sorted(SERVICES - {"valkey"}))
def test_every_trackpipe_command_parses(service: str) -> None:
    command = compose()["services"][service]["command"]
    args = build_parser().parse_args(command)  # exits (SystemExit) on an unknown command or option
    assert args.command in ("edge", "console", "worker")


def test_the_mounted_config_loads_and_names_real_queues() -> None:
    config = load(ROOT / "deploy" / "trackpipe.toml")
    for service in ("ingest-worker", "delivery-worker"):
        command = compose()["services"][service]["command"]
        queues = parse_queues(command[command.index("--queues") + 1], config)
        expected = ["ingest"] if service == "ingest-worker" else ["deliver:lake", "retry:lake"]
        assert queues == expected


def test_valkey_keeps_what_it_acknowledged() -> None:
    command = compose()["services"]["valkey"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # A 200 means the events are on disk, not only in the server's memory (README, "What 200 means").
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_the_console_serves_the_admin_api_on_its_own_port() -> None:
    service = compose()["services"]["console"]
    args = build_parser().parse_args(service["command"])
    assert (args.command, args.host, args.port) == ("console", "0.0.0.0", 8081)
    [published] = service["ports"]
    interface, host_port, container_port = published.split(":")
    # Only on the host's loopback: the admin API is not for the public.
    assert (interface, container_port) == ("127.0.0.1", "8081")
    # Outside the range the edge replicas take their host ports from, or one of them could take it.
    [edge_ports] = compose()["services"]["edge"]["ports"]
    low, high = (int(p) for p in edge_ports.split(":")[0].split("-"))
    assert not low <= int(host_port) <= high, (published, edge_ports)
    assert "8081/healthz" in " ".join(service["healthcheck"]["test"])


# -- compose.replicated.yaml: the primary, a replica and three sentinels -------------------------


def replicated_compose() -> dict:
    return yaml.safe_load((ROOT / "compose.replicated.yaml").read_text())


def _flag(command: list[str], name: str) -> list[str]:
    at = command.index(name)
    return command[at + 1 : at + 3]


def test_the_replicated_layout_adds_a_replica_and_three_sentinels() -> None:
    services = replicated_compose()["services"]
    assert set(services) - SERVICES == {"valkey-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert set(services) >= SERVICES  # it overrides compose.yaml's services, adds to them
    for name in ("valkey", "valkey-replica"):
        command = [str(part) for part in services[name]["command"]]
        # WAITAOF (edge.min_replicas) needs the append-only file on every server.
        assert _flag(command, "--appendonly")[0] == "yes", name
        assert _flag(command, "--appendfsync")[0] == "always", name
        assert _flag(command, "--maxmemory-policy")[0] == "noeviction", name
        assert _flag(command, "--replica-announce-ip")[0] == name
    replica = [str(part) for part in services["valkey-replica"]["command"]]
    assert _flag(replica, "--replicaof") == ["valkey", "6379"]
    assert "--replicaof" not in [str(part) for part in services["valkey"]["command"]]
    assert "valkey-replica-data" in replicated_compose()["volumes"]


def test_every_sentinel_watches_the_primary_with_a_quorum_of_two() -> None:
    services = replicated_compose()["services"]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = services[name]["command"][-1]
        assert "port 26379" in script
        assert "sentinel monitor mymaster valkey 6379 2" in script
        # Names, not addresses: the containers' addresses change when they restart.
        assert script.index("resolve-hostnames yes") < script.index("sentinel monitor")
        assert "exec valkey-sentinel /tmp/sentinel.conf" in script


def test_every_trackpipe_service_connects_through_the_sentinels() -> None:
    from trackpipe.connection import check_redis_url, parse_sentinel_url

    services = replicated_compose()["services"]
    sentinels = {(name, 26379) for name in ("sentinel-1", "sentinel-2", "sentinel-3")}
    for name in SERVICES - {"valkey"}:
        url = services[name]["environment"]["TRACKPIPE_REDIS_URL"]
        assert check_redis_url(url) == []
        target = parse_sentinel_url(url)
        assert set(target.sentinels) == sentinels and target.service == "mymaster", name
        assert set(services[name]["depends_on"]) == {"sentinel-1", "sentinel-2", "sentinel-3"}
        # The command itself comes from compose.yaml, unchanged.
        assert "command" not in services[name]


def test_the_readme_tells_how_to_start_the_replicated_layout() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose -f compose.yaml -f compose.replicated.yaml up" in readme
