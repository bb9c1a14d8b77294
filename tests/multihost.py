"""skinsite on several hosts, on one machine: `python -m tests.multihost` (`make multihost`; root and `ip netns`).

Each host is a network namespace of its own, wired to one switch (a bridge in a namespace of its own) by a veth
pair, with a private address in 198.18.0.0/15 (the range set aside for network tests), so each reaches the others
only by those addresses, as separate machines on a LAN would:

    data      .2   a private PostgreSQL cluster (initdb), Redis, and the object store: moto's standalone S3 server
                   (`moto.server`; no MinIO binary can be installed here; production uses real S3 or MinIO)
    web       .3   gunicorn serving skinsite, files in the bucket (S3_BUCKET and friends)
    worker1   .11  `celery worker`, one process
    worker2   .12  `celery worker`, one process
    (this script, the clinic's client and the operator, is .1 in the machine's own namespace)

What it does, in one run:
1. throughput with 1 worker host, then with 2 (worker2 joins between them): a batch of submissions each, uploaded
   while the workers take nothing from the queue (Celery's remote control), then timed from the moment they all
   start to the batch's last result; both printed, and the ratio;
2. `--images` submissions (100) through the API while both hosts work; midway, worker2's link is cut at the
   switch (`ip link set ... down`) while it holds work, and stays cut. Worker1's sweeper puts worker2's analysis
   back after the hard time limit, and the claim keeps a late duplicate from running twice;
3. every submission must end done exactly once, its heatmap and PDF report readable through the web host. It
   prints submitted / done / failed / lost / duplicated and exits 1 on any loss, failure or unreadable file, or
   when 2 hosts do not reach `--min-speedup` (1.7) times the throughput of 1.

Each analysis holds its worker for `--work` seconds more than the model needs (tests/fault_injection): the
stand-in for a host's own CPU. All hosts here share this machine's cores (two, on the machine this was written
on), so without it the second worker host would mostly compete with the first for them; `--work 0` measures that
(the throughputs only: the cut needs the stand-in work to catch worker2 inside an analysis).

Everything it made (namespaces, the veth into this namespace, processes, the temporary folder) is removed at the
end, on failure and on Ctrl-C too; namespaces left by a run that was killed outright are removed by the next run.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests import stack

NAME = "multihost"
PREFIX = "skmh"  # namespaces: skmh-<pid>-<host>; veths: mh<pid><host letter><h|s>
BUCKET = "skinsite-media"
S3_CREDENTIALS = {"S3_ACCESS_KEY_ID": "multihost", "S3_SECRET_ACCESS_KEY": "multihost-secret", "S3_REGION": "us-east-1"}


def say(text: str) -> None:
    print(f"[{NAME}] {text}", flush=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def unavailable_reason() -> str | None:
    """Why the script cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        probe = f"{PREFIX}-{os.getpid()}-probe"
        if ip("netns", "add", probe, check=False).returncode != 0:
            return "`ip netns add` fails here (no CAP_SYS_ADMIN, or no network namespaces in this kernel)"
        ip("netns", "del", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if reason := stack.PostgresCluster.unavailable_reason():
        return reason
    try:
        import flask  # noqa: F401 -- moto's server runs on Flask
        import moto.server  # noqa: F401
    except ImportError:
        return "moto's S3 server is not installed (requirements-test.txt)"
    return None


def remove_leftovers() -> None:
    """Namespaces of earlier runs whose process is gone (killed with SIGKILL, so no clean-up ran)."""
    for line in ip("netns", "list").stdout.splitlines():
        if (m := re.match(rf"({PREFIX}-(\d+)-\S+)", line)) and not Path(f"/proc/{m.group(2)}").exists():
            ip("netns", "del", m.group(1), check=False)
    for line in ip("-o", "link", "show").stdout.splitlines():
        if (m := re.search(r"^\d+: (mh(\d+)[a-z][hs])[@:]", line)) and not Path(f"/proc/{m.group(2)}").exists():
            ip("link", "del", m.group(1), check=False)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    switch_port: str  # the veth end in the switch: set down, the host is cut off


class Network:
    """A switch and hosts on one /24, all in namespaces made here; `close` removes them all."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.tag = f"{PREFIX}-{pid}"
        self.veth = f"mh{pid}"
        self.subnet = f"198.{18 + (pid >> 8) % 2}.{pid % 256}"
        self.switch = f"{self.tag}-switch"
        self.namespaces: list[str] = []
        self.root_link: str | None = None
        self.hosts: dict[str, Host] = {}

    def open(self) -> "Network":
        if f"{self.subnet}.0/24" in ip("route", "show").stdout:
            raise SystemExit(f"{self.subnet}.0/24 is routed on this machine already; run again (another pid)")
        self._namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def _namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _cable(self, letter: str, namespace: str | None, address: str) -> str:
        """A veth pair from a host (None: this namespace) to the switch; returns the switch's end."""
        host_end, switch_end = f"{self.veth}{letter}h", f"{self.veth}{letter}s"
        ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
        if namespace is None:
            self.root_link = host_end
        ip("link", "set", switch_end, "netns", self.switch)
        ip("-n", self.switch, "link", "set", switch_end, "master", "br0", "up")
        where = [] if namespace is None else ["-n", namespace]
        if namespace is not None:
            ip("link", "set", host_end, "netns", namespace)
            ip("-n", namespace, "link", "set", host_end, "name", "eth0")
            host_end = "eth0"
        ip(*where, "addr", "add", f"{address}/24", "dev", host_end)
        ip(*where, "link", "set", host_end, "up")
        return switch_end

    def add_host(self, name: str, letter: str, last: int) -> Host:
        namespace = f"{self.tag}-{name}"
        self._namespace(namespace)
        address = f"{self.subnet}.{last}"
        self.hosts[name] = Host(name, namespace, address, self._cable(letter, namespace, address))
        return self.hosts[name]

    def join_here(self, last: int = 1) -> str:
        """This script's own place on the switch (the client and the operator); returns its address."""
        address = f"{self.subnet}.{last}"
        self._cable("r", None, address)
        return address

    def cut(self, host: Host) -> None:
        ip("-n", self.switch, "link", "set", host.switch_port, "down")

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            ip("netns", "del", namespace, check=False)  # its veth ends go with it, and their peers
        if self.root_link:
            ip("link", "del", self.root_link, check=False)


class HostProcess:
    """A process running inside a host's namespace (`ip netns exec` replaces itself with the command), in a
    process group of its own so that stopping it stops its children."""

    def __init__(self, host: Host, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.host, self.log_path = host, log
        self._log = open(log, "ab")  # noqa: SIM115 -- open for the life of the process
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *argv],
            cwd=stack.ROOT,
            env=env or os.environ.copy(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{what} exited:\n{self.log_text()[-3000:]}")
            return condition()

        stack.wait_until(ready, timeout, what)

    def stop(self, timeout: float = 20) -> None:
        from workers.process import stop_process_group

        stop_process_group(self.process, timeout)
        self._log.close()


class HostPostgres(stack.PostgresCluster):
    """The private cluster of stack.py, run inside the data host and listening on its address."""

    def __init__(self, folder: Path, host: Host, subnet: str):
        super().__init__(folder, port=5432)
        self.host, self.subnet = host, subnet

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        command = ["ip", "netns", "exec", self.host.namespace, *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> "HostPostgres":
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        # Keepalives: a worker host whose link is cut leaves its connections open, and any row lock one held
        # with them; the server drops them after about 11 s instead of the kernel's default two hours.
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses={self.host.address} -c fsync=off "
            "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", self.host.address, "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgres://postgres@{self.host.address}:{self.port}/{name}"


def wait_for_port(address: str, port: int, timeout: float, what: str) -> None:
    import socket

    def answers() -> bool:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            return False

    stack.wait_until(answers, timeout, what)


def start_worker(host: Host, folder: Path, env: dict[str, str]) -> HostProcess:
    worker = HostProcess(
        host,
        [
            sys.executable,
            *("-m", "celery", "-A", "workers", "worker", "--loglevel=INFO", "--concurrency=1"),
            *("--without-gossip", "--without-mingle", f"--hostname={host.name}@%h"),
        ],
        folder / f"{host.name}.log",
        env,
    )
    worker.wait_for(lambda: " ready." in worker.log_text(), 120, f"the worker on {host.name}")
    return worker


def submit_batch(base_url: str, token: str, cases: list[int], images: list[Path]) -> stack.Uploader:
    """Upload images from one thread per case; returns one Uploader holding every acknowledgement."""
    uploaders = [stack.Uploader(base_url, token) for _ in cases]
    shares = [images[i :: len(cases)] for i in range(len(cases))]
    threads = [
        threading.Thread(target=lambda u=u, c=c, s=s: [u.submit(c, p) for p in s], daemon=True)
        for u, c, s in zip(uploaders, cases, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = uploaders[0]
    for other in uploaders[1:]:
        merged.acknowledged += other.acknowledged
        merged.analysis_ids += other.analysis_ids
        merged.errors += other.errors
        merged.retries += other.retries
        merged.answers.update(other.answers)
    return merged


def consuming(on: bool, hosts: int) -> None:
    """Stop (or start again) every worker's taking of tasks from the queue, through Celery's remote control, and
    check that all `hosts` answered."""
    from workers.celery import app

    command = app.control.add_consumer if on else app.control.cancel_consumer
    replies = command("celery", reply=True, timeout=10)
    if len(replies) != hosts:
        raise SystemExit(f"[{NAME}] {len(replies)} of {hosts} workers answered {command.__name__}: {replies}")


def throughput(label: str, hosts: int, base_url: str, token: str, cases: list[int], images: list[Path], timeout: float):
    """Analyses per second of the worker hosts with a full queue: the batch is uploaded while they take nothing,
    then they all start at once; from then to the batch's last result. (Measured from the first upload instead, a
    fast pair of hosts would measure the uploads.)"""
    from analysis.models import Analysis

    consuming(False, hosts)
    uploader = submit_batch(base_url, token, cases, images)
    if uploader.errors:
        raise SystemExit(f"[{NAME}] the {label} batch was not all acknowledged: {uploader.errors[:3]}")
    started = time.time()
    consuming(True, hosts)
    result = stack.wait_for_results(uploader.acknowledged, timeout)
    if not result.ok:
        raise SystemExit(f"[{NAME}] the {label} batch did not finish cleanly: {result.line()}")
    last = max(Analysis.objects.filter(image_id__in=uploader.acknowledged).values_list("finished_at", flat=True))
    seconds = last.timestamp() - started
    rate = len(images) / seconds
    say(f"throughput with {label}: {rate:.2f} analyses/s ({len(images)} queued, all done {seconds:.1f} s later)")
    wait_for_reports(uploader.acknowledged, timeout)  # the next batch starts on idle workers
    return rate


def wait_for_reports(image_ids: list[int], timeout: float) -> None:
    from analysis.models import Analysis

    def written() -> bool:
        return not Analysis.objects.filter(image_id__in=image_ids, status="done", report="").exists()

    stack.wait_until(written, timeout, "the reports", interval=0.5)


def files_through_the_web(base_url: str, token: str, analysis_ids: list[int], timeout: float) -> list[str]:
    """Fetch every analysis's heatmap and PDF report from the web host, as a client would; what was not readable.
    A report not written yet is asked for again until `timeout` (the view asks the workers for a missing one)."""
    import httpx

    problems = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30) as http:
        deadline = time.monotonic() + timeout
        for pk in analysis_ids:
            for kind, magic in (("heatmap.png", b"\x89PNG"), ("report.pdf", b"%PDF-")):
                while True:
                    response = http.get(f"/api/analyses/{pk}/{kind}")
                    if response.status_code == 200 and response.content.startswith(magic):
                        break
                    if time.monotonic() > deadline:
                        problems.append(f"analysis {pk} {kind}: {response.status_code} {response.text[:100]}")
                        break
                    time.sleep(1)
    return problems


def clean_up_on_signals(exits: ExitStack) -> None:
    """SIGTERM (a test runner's timeout) and Ctrl-C remove everything the run made, then end it. Not by raising
    from the handler: an exception raised while Python runs a finalizer is printed and dropped, and the run would go
    on. The handler runs in the main thread, between two of its steps, so it may close the stack itself."""

    def stop(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.write(2, f"[{NAME}] {signal.Signals(signum).name}: removing what the run made\n".encode())
        try:
            exits.close()
        finally:
            os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.multihost", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100, help="submissions during which a worker host is cut off")
    parser.add_argument("--throughput-images", type=int, default=20, help="submissions per throughput batch")
    parser.add_argument("--cut-after", type=int, default=None, help="acknowledged uploads before the cut (half)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between the submissions")
    parser.add_argument("--work", type=float, default=0.4, help="seconds each analysis holds its worker on top")
    parser.add_argument("--min-speedup", type=float, default=1.7, help="2 hosts' throughput over 1 host's")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the results at most")
    parser.add_argument("--logs", type=Path, help="copy every host's logs into this folder at the end")
    args = parser.parse_args(argv)
    if reason := unavailable_reason():
        print(f"[{NAME}] cannot run here: {reason}")
        return 2
    remove_leftovers()
    cut_after = args.cut_after if args.cut_after is not None else args.images // 2
    with ExitStack() as exits:
        clean_up_on_signals(exits)
        folder = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="skinsite-multihost-")))
        os.chmod(folder, 0o755)  # PostgreSQL runs as the postgres user and must reach its folder
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            exits.callback(lambda: [subprocess.run(["cp", str(p), str(args.logs)]) for p in folder.rglob("*.log")])
        network = Network()
        exits.callback(network.close)
        network.open()
        here = network.join_here()
        data = network.add_host("data", "d", 2)
        web_host = network.add_host("web", "e", 3)
        hosts = [network.add_host("worker1", "a", 11), network.add_host("worker2", "b", 12)]
        say(
            f"hosts on {network.subnet}.0/24: this script {here}, "
            + ", ".join(f"{h.name} {h.address}" for h in network.hosts.values())
        )

        postgres = HostPostgres(folder / "postgres", data, network.subnet)
        exits.callback(postgres.stop, "immediate")
        postgres.init()
        database_url = postgres.create_database("skinsite")
        from skinsite import embedded_redis

        redis = HostProcess(data, embedded_redis.command(6379, host=data.address), folder / "redis.log")
        exits.callback(redis.stop)
        s3 = HostProcess(
            data, [sys.executable, "-m", "moto.server", "-H", data.address, "-p", "9000"], folder / "s3.log"
        )
        exits.callback(s3.stop)
        wait_for_port(data.address, 6379, 30, "redis on the data host")
        wait_for_port(data.address, 9000, 60, "the S3 server on the data host")
        s3_env = {"S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": f"http://{data.address}:9000", **S3_CREDENTIALS}
        redis_url = f"redis://{data.address}:6379/0"
        stack.configure(folder, database_url, redis_url, ALLOWED_HOSTS=web_host.address, **s3_env)
        make_bucket(s3_env)

        # Fast recovery (sweep every second, a 10 s hard time limit) and the stand-in work, as the fault scripts.
        env = {
            **os.environ,
            "SKINSITE_INFERENCE_THREADS": "1",
            **stack.worker_env(SKINSITE_TEST_SLOW_ANALYSIS=str(args.work)),
            "PYTHONPATH": os.pathsep.join([stack.FAULT_INJECTION, str(stack.ROOT)]),
        }
        web = HostProcess(
            web_host,
            [
                sys.executable,
                *("-m", "gunicorn", "skinsite.wsgi:application", f"--bind={web_host.address}:8000"),
                *("--workers=2", "--threads=4", "--timeout=60"),
            ],
            folder / "web.log",
            {**os.environ, "PYTHONPATH": str(stack.ROOT)},
        )
        exits.callback(web.stop)
        base_url = f"http://{web_host.address}:8000"
        wait_for_port(web_host.address, 8000, 60, "gunicorn on the web host")

        workers = {}
        for host in hosts:  # stopped last-started first; the cut one at once (it cannot finish anything)
            exits.callback(lambda h=host: workers[h.name].stop(3 if h is hosts[1] else 20) if h.name in workers else 0)
        workers["worker1"] = start_worker(hosts[0], folder, env)
        say("data, web and worker1 up")

        tenant = stack.seed_tenant(clients=4, name="Multihost clinic")
        pictures = stack.ham10000_images(2 * args.throughput_images + args.images)
        batch_1, batch_2 = (
            pictures[: args.throughput_images],
            pictures[args.throughput_images : 2 * args.throughput_images],
        )
        stream_images = pictures[2 * args.throughput_images :]

        one = throughput("1 worker host", 1, base_url, tenant.token, tenant.cases, batch_1, args.timeout)
        workers["worker2"] = start_worker(hosts[1], folder, env)
        two = throughput("2 worker hosts", 2, base_url, tenant.token, tenant.cases, batch_2, args.timeout)
        speedup = two / one
        say(f"throughput: 1 worker host {one:.2f}/s, 2 worker hosts {two:.2f}/s, {speedup:.2f}x")
        if args.work <= 0:
            # Without the stand-in work nothing can tell that worker2 is inside an analysis at the cut.
            say("--work 0: the throughputs only, no cut")
            return 0 if speedup >= args.min_speedup else 1

        uploader, held = cut_during_stream(
            network, workers["worker2"], base_url, tenant, stream_images, cut_after, args.interval, args.work
        )
        result = stack.wait_for_results(uploader.acknowledged, args.timeout)
        time.sleep(2)  # a late duplicate would show up as a second attempt or analysis
        result = stack.tally(uploader.acknowledged)
        from analysis.models import Analysis

        done_ids = list(
            Analysis.objects.filter(image_id__in=uploader.acknowledged, status="done").values_list("pk", flat=True)
        )
        unreadable = files_through_the_web(base_url, tenant.token, done_ids, args.timeout)
        say(
            f"submitted {result.submitted}, done {result.done}, failed {result.failed}, lost {result.lost}, "
            f"duplicated {result.duplicates}"
        )
        say(
            f"after the cut: {result.recovered} analyses taken over from the cut host; "
            f"{len(done_ids) - len({p.split()[1] for p in unreadable})} of {len(done_ids)} with heatmap and report "
            "readable through the web host"
        )
        for problem in unreadable[:10]:
            say(f"  not readable: {problem}")
        for error in uploader.errors[:5]:
            say(f"  not acknowledged: {error}")
        if not held:
            say("the cut host held no analysis: the cut tested nothing")
        ok = (
            bool(held)
            and result.ok
            and result.submitted == len(stream_images)
            and not uploader.errors
            and not unreadable
            and speedup >= args.min_speedup
        )
        if speedup < args.min_speedup:
            say(f"2 worker hosts gave {speedup:.2f}x the throughput of 1, less than {args.min_speedup}x")
        say("OK: every submission done exactly once, its files readable through the web host" if ok else "FAILED")
        return 0 if ok else 1


def make_bucket(s3_env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    boto3.client(
        "s3",
        endpoint_url=s3_env["S3_ENDPOINT_URL"],
        region_name=s3_env["S3_REGION"],
        aws_access_key_id=s3_env["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["S3_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket=s3_env["S3_BUCKET"])


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        try:
            pids = [int(child) for child in children.read_text().split()]
        except OSError:
            continue
        found += pids
        frontier += pids
    return found


def in_stand_in_work(worker: HostProcess) -> bool:
    """Whether a process of the worker sleeps in an analysis's stand-in work (tests/fault_injection): the one place a
    worker sleeps, and it does so after claiming the analysis and before storing its result."""
    for pid in descendants(worker.process.pid):
        try:
            if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
                return True
        except OSError:
            continue
    return False


def cut_during_stream(
    network: Network,
    victim: HostProcess,
    base_url: str,
    tenant: stack.Tenant,
    images: list[Path],
    cut_after: int,
    interval: float,
    work: float,
) -> tuple[stack.Uploader, list[int]]:
    """Submit the stream; once `cut_after` uploads are acknowledged, cut the victim's link at the switch at a moment
    it is inside an analysis. Returns when every upload is answered, with the analyses the victim held."""
    from django.utils import timezone

    from analysis.models import Analysis
    from tests.faults.common import Stream

    uploader = stack.Uploader(base_url, tenant.token)
    stream = Stream(uploader, tenant.cases[0], images, interval).start()
    stack.wait_until(lambda: len(uploader.acknowledged) >= cut_after, 300, f"{cut_after} acknowledged uploads")
    stack.wait_until(lambda: in_stand_in_work(victim), 60, f"{victim.host.name} inside an analysis", 0.01)
    network.cut(victim.host)
    say(
        f"cut {victim.host.name}'s link after {len(uploader.acknowledged)} acknowledged uploads, while it ran an analysis"
    )
    cut_at = timezone.now()
    # The proof: an analysis claimed before the cut and still running well after one takes (about a second and a
    # half on the survivor), until the survivor's sweeper takes it back after the hard time limit.
    time.sleep(3 + 2 * work)
    held = list(
        Analysis.objects.filter(status="running", started_at__lte=cut_at).values_list("pk", flat=True).order_by("pk")
    )
    say(f"{victim.host.name} held analyses {held} when it was cut off")
    stream.join()
    return uploader, held


if __name__ == "__main__":
    sys.exit(main())
