import redis

from workers import app


def test_redis_answers_ping(redis_url):
    assert redis.Redis.from_url(redis_url).ping() is True


def test_the_celery_app_reaches_its_broker(redis_url):
    assert app.conf.broker_url == redis_url
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
