"""Start and stop real `celery -A workers worker` processes against a given database, Redis and media folder.

Used by the queue tests and by the benchmark (workers/bench.py); the service itself starts its worker
from the Procfile or docker-compose.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def stop_process_group(process: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM a process started in its own group (and its children), SIGKILL if it has not gone in time."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def database_url() -> str:
    """The URL of the database this process is connected to (in tests: the test database)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Worker:
    def __init__(self, redis_url: str, log: Path, concurrency: int = 1, **env: str):
        self.log_path = log
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "PYTHONPATH": os.pathsep.join(filter(None, [env.pop("PYTHONPATH", ""), str(ROOT)])),
            "SKINSITE_INFERENCE_THREADS": "1",
            **env,
        }
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Worker":
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- open for the life of the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={self.concurrency}",
                "--without-gossip",
                "--without-mingle",
                f"--hostname=test-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def pool_pids(self) -> list[int]:
        """The pool (child) processes that run the tasks."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def kill(self) -> None:
        """kill -9 the worker and its pool processes at once, as a crash or an OOM killer would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
