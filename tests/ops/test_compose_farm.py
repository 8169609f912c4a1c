"""compose.yaml's farm: scalable GPU workers on the shared PostgreSQL queue, the engine as API node."""

from __future__ import annotations

from test_docker_files import SERVICES, TARGETS, command_of, parse_spooky


def test_the_worker_service_is_a_scalable_gpu_worker_on_the_shared_queue():
    worker = SERVICES["worker"]
    assert TARGETS["worker"] == TARGETS["engine"] and worker["profiles"] == ["farm"]
    ns = parse_spooky(command_of("worker"))
    assert ns.command == "engine" and ns.role == "worker"
    # Scalable: no fixed name or published port (replicas would clash), a GPU each.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    # A worker without the shared database would be refused at start: compose says so first.
    assert worker["environment"]["SPOOKY_DATABASE_URL"].startswith("${SPOOKY_DATABASE_URL:?")
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {v for v in worker["volumes"] if isinstance(v, str)} == {"weights:/weights", "data:/data"}
    # The engine service's role follows .env: `api` makes it the farm's API node.
    assert SERVICES["engine"]["environment"]["SPOOKY_ENGINE__ROLE"] == "${SPOOKY_ENGINE_ROLE:-all}"
