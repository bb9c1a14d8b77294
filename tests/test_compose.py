from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_compose_runs_postgres_redis_web_and_worker():
    services = load_compose()["services"]

    assert set(services) >= {"postgres", "redis", "web", "worker"}
    assert "gunicorn skinsite.wsgi" in command_of(services["web"])
    assert "celery -A workers worker" in command_of(services["worker"])
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DEBUG"] == "0"
        assert set(services[name]["depends_on"]) == {"postgres", "redis"}


def test_compose_keeps_the_database_and_media_in_volumes():
    compose = load_compose()
    services = compose["services"]

    assert {"postgres-data", "media"} <= set(compose["volumes"])
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    for name in ("web", "worker"):
        assert any(v.startswith("media:") for v in services[name]["volumes"])
    assert (ROOT / services["web"]["build"]).resolve() == ROOT
    assert (ROOT / "Dockerfile").exists()
