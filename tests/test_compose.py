from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_compose_runs_postgres_redis_minio_web_and_worker():
    services = load_compose()["services"]

    assert set(services) >= {"postgres", "redis", "minio", "web", "worker"}
    assert "gunicorn skinsite.wsgi" in command_of(services["web"])
    assert "celery -A workers worker" in command_of(services["worker"])
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DEBUG"] == "0"
        assert set(services[name]["depends_on"]) == {"postgres", "redis", "minio-bucket"}
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"


def test_compose_keeps_the_files_in_minio_and_the_database_in_volumes():
    compose = load_compose()
    services = compose["services"]

    assert {"postgres-data", "minio-data"} <= set(compose["volumes"])
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    assert any(v.startswith("minio-data:") for v in services["minio"]["volumes"])
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["S3_ENDPOINT_URL"] == "http://minio:9000" and env["S3_BUCKET"]
        assert "volumes" not in services[name]  # no shared disk: web and workers may be on other machines
    # The bucket is private, and the store is reached only inside the compose network.
    assert "mc anonymous set none" in " ".join(services["minio-bucket"]["entrypoint"])
    assert "ports" not in services["minio"]
    assert (ROOT / services["web"]["build"]).resolve() == ROOT
    assert (ROOT / "Dockerfile").exists()


def test_workers_scale_with_compose_up_scale():
    worker = load_compose()["services"]["worker"]

    # A fixed container name or a published port would stop `docker compose up --scale worker=4`.
    assert "container_name" not in worker and "ports" not in worker
