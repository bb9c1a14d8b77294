"""A bounded load test on loopback: `python -m tests.load` (`make load`).

Starts gunicorn serving skinsite, two `celery worker` processes and a private Redis (tests/stack.py), seeds a
clinic with a staff member, an API token, a patient and a case per client, then `--clients` concurrent
clients (httpx + asyncio) submit `--images` real HAM10000 test images through `POST /api/images/` and poll
`GET /api/analyses/{id}/` until every analysis is done or failed. Prints errors, lost submissions,
throughput and latency percentiles; exits 1 on any error, failure or loss.

    python -m tests.load                                  # 200 images, 20 clients, SQLite (WAL) in a temp folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/skinsite_load python -m tests.load
    python -m tests.load --images 20 --clients 4          # what tests/test_load.py runs

Latencies: "upload" is the client's request time for a 201; "submit to done" is the server's own
finished_at - created_at of each analysis (the client's polling interval does not blur it).
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from tests import stack


@dataclass
class Client:
    """One simulated clinic system: its case, what it sent, and what went wrong."""

    case: int
    pending: dict[int, float] = field(default_factory=dict)  # analysis id -> when the upload was acknowledged
    results: dict[int, dict] = field(default_factory=dict)  # analysis id -> its final API answer
    upload_seconds: list[float] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def submit_all(http: httpx.AsyncClient, client: Client, queue: asyncio.Queue) -> None:
    while True:
        try:
            path = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        started = time.perf_counter()
        try:
            response = await http.post(
                "/api/images/",
                data={"case": str(client.case)},
                files={"image": (path.name, path.read_bytes(), "image/jpeg")},
            )
        except httpx.HTTPError as error:
            client.errors.append(f"upload {path.name}: {type(error).__name__}: {error}")
            continue
        if response.status_code != 201:
            client.errors.append(f"upload {path.name}: {response.status_code} {response.text[:200]}")
            continue
        now = time.perf_counter()
        client.upload_seconds.append(now - started)
        client.acked_at.append(now)
        client.pending[response.json()["analysis"]["id"]] = now


async def poll_all(http: httpx.AsyncClient, client: Client, deadline: float, interval: float) -> None:
    while client.pending and time.perf_counter() < deadline:
        for analysis_id in list(client.pending):
            try:
                response = await http.get(f"/api/analyses/{analysis_id}/")
            except httpx.HTTPError as error:
                client.errors.append(f"poll {analysis_id}: {type(error).__name__}: {error}")
                continue
            if response.status_code != 200:
                client.errors.append(f"poll {analysis_id}: {response.status_code} {response.text[:200]}")
                continue
            body = response.json()
            if body["status"] in ("done", "failed"):
                client.results[analysis_id] = body
                del client.pending[analysis_id]
        await asyncio.sleep(interval)


async def run_clients(base_url: str, token: str, cases: list[int], images: list[Path], args) -> list[Client]:
    queue: asyncio.Queue = asyncio.Queue()
    for path in images:
        queue.put_nowait(path)
    clients = [Client(case) for case in cases]
    limits = httpx.Limits(max_connections=len(clients))
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=60, limits=limits
    ) as http:
        # Every client submits its share from the common queue, then polls its own analyses to the end.
        deadline = time.perf_counter() + args.timeout

        async def one(client: Client) -> None:
            await submit_all(http, client, queue)
            await poll_all(http, client, deadline, args.poll_interval)

        await asyncio.gather(*(one(c) for c in clients))
    return clients


def report(clients: list[Client], started: float, submitted_at: float, finished_at: float, label: str) -> int:
    uploads = [s for c in clients for s in c.upload_seconds]
    results = [r for c in clients for r in c.results.values()]
    errors = [e for c in clients for e in c.errors]
    lost = sum(len(c.pending) for c in clients)
    failed = [r for r in results if r["status"] == "failed"]
    done = [r for r in results if r["status"] == "done"]
    server = [
        (datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["created_at"])).total_seconds()
        for r in results
        if r["finished_at"]
    ]
    # The workers' throughput: results over the span from the first analysis created to the last finished.
    first = min((datetime.fromisoformat(r["created_at"]) for r in results), default=None)
    last = max((datetime.fromisoformat(r["finished_at"]) for r in done if r["finished_at"]), default=None)
    work_span = (last - first).total_seconds() if first and last else float("nan")

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * stack.percentile(values, q):.0f}"

    def s(values: list[float], q: float) -> str:
        return f"{stack.percentile(values, q):.2f}"

    print(f"[load] {label}")
    print(
        f"[load] submitted {len(uploads)} of {len(uploads) + sum(1 for e in errors if e.startswith('upload'))}, "
        f"done {len(done)}, failed {len(failed)}, errors {len(errors)}, lost {lost}"
    )
    print(
        f"[load] throughput: {len(uploads) / (submitted_at - started):.1f} submissions/s "
        f"({submitted_at - started:.1f} s to submit all), {len(done) / work_span:.2f} analyses completed/s "
        f"({work_span:.1f} s from the first queued to the last done; {finished_at - started:.1f} s wall in all)"
    )
    print(f"[load] upload latency: p50 {ms(uploads, 50)} ms, p95 {ms(uploads, 95)} ms, p99 {ms(uploads, 99)} ms")
    print(f"[load] submit to done: p50 {s(server, 50)} s, p95 {s(server, 95)} s, p99 {s(server, 99)} s")
    for error in errors[:10]:
        print(f"[load]   {error}")
    ok = not errors and not lost and not failed
    print(f"[load] {'OK: 0 errors, 0 lost' if ok else 'FAILED'}")
    return 0 if ok else 1


def wait_for_reports(analysis_ids: list[int], timeout: float) -> float:
    """Seconds until every done analysis has its PDF (reports go after analyses, at a lower priority)."""
    from analysis.models import Analysis

    started = time.perf_counter()
    missing = Analysis.objects.filter(pk__in=analysis_ids, status="done", report="")
    while missing.exists() and time.perf_counter() - started < timeout:
        time.sleep(0.2)
    return time.perf_counter() - started if not missing.exists() else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="image submissions in all")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (4 threads each)")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between a client's polls")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every result at most")
    parser.add_argument("--logs", type=Path, help="copy the web and worker logs into this folder at the end")
    args = parser.parse_args(argv)

    with ExitStack() as exits:
        folder = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="skinsite-load-")))
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{folder / 'load.sqlite3'}"
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis = stack.RedisServer().start()
            exits.callback(redis.stop)
            redis_url = redis.url
        stack.configure(folder, database_url, redis_url)
        from django.conf import settings

        from workers.process import Worker

        images = stack.ham10000_images(args.images)
        tenant = stack.seed_tenant(clients=args.clients, name="Load clinic")
        for i in range(args.workers):
            exits.enter_context(Worker(redis_url, folder / f"worker{i}.log"))
        web = exits.enter_context(stack.Web(folder / "web.log", workers=args.web_workers))
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        label = (
            f"{args.images} images, {args.clients} clients, gunicorn {args.web_workers}x4 threads, "
            f"{args.workers} workers, database {engine}, {os.cpu_count()} CPUs"
        )
        print(f"[load] {label}: running", flush=True)

        started = time.perf_counter()
        clients = asyncio.run(run_clients(web.url, tenant.token, tenant.cases, images, args))
        finished = time.perf_counter()
        submitted_at = max((t for c in clients for t in c.acked_at), default=finished)
        reports_after = wait_for_reports([pk for c in clients for pk in c.results], args.timeout)
        label += f"; every PDF report written {reports_after:.1f} s after the clients saw the last result"
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            exits.callback(lambda: [shutil.copy(log, args.logs) for log in folder.glob("*.log")])
        return report(clients, started, submitted_at, finished, label)


if __name__ == "__main__":
    sys.exit(main())
