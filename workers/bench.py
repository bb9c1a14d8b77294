"""Push images through the real stack and print what it costs: ``python -m workers.bench`` (``make bench``).

Redis + K `celery worker` processes + the database, as the service runs them. Without DATABASE_URL and
REDIS_URL it makes a throw-away SQLite file and an embedded Redis. Prints:
- warm latency: images submitted one at a time, submit-to-done p50/p95 (from the rows' own timestamps);
- throughput: N images submitted at once, images/s until the last is done;
- the served model's own time per image (ml.study.bench's LiteRT path, batch 1, same thread count as a worker), what a
  worker computes per image (one call on the companion file, Grad-CAM, quality gate, overlay PNG), and the
  queue's overhead (latency p50 minus that);
- each worker's time to load and warm up its model (from its log);
- the median PDF report render time, and each worker pool process's resident memory.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_images(count: int) -> list[Path]:
    from ml.serve import paths
    from ml.train import data

    if (paths.DATA_DIR / "split.csv").exists():
        test = data.part(data.load_dataset(paths.DATA_DIR), "test")
        return [Path(p) for p in test["path"][:count]]
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="skinsite-bench-images-"))
    for i in range(count):
        image = Image.new("RGB", (200, 150), (220, 170 - i % 40, 150))
        image.paste((90, 50, 40), (60 + i % 30, 40, 140, 110))
        image.save(folder / f"bench{i}.jpg", quality=92)
    return sorted(folder.glob("*.jpg"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60, help="images submitted at once (throughput)")
    parser.add_argument("--sequential", type=int, default=20, help="images submitted one at a time (latency)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one pool process each)")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="skinsite-bench-")))
        os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp / 'bench.sqlite3'}")
        os.environ["MEDIA_ROOT"] = str(tmp / "media")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skinsite.settings")
        if not os.environ.get("REDIS_URL"):
            from skinsite import embedded_redis

            os.environ["REDIS_URL"] = stack.enter_context(embedded_redis.running())
        import django

        django.setup()
        run(args, tmp, stack)


def run(args, tmp: Path, stack: ExitStack) -> None:
    from django.conf import settings
    from django.core.files import File
    from django.core.management import call_command

    from analysis import reports
    from analysis.models import Analysis, Case, Clinic, Membership, Patient
    from analysis.services import submit_image
    from ml.study.bench import bench as model_bench
    from workers.process import Worker

    call_command("migrate", verbosity=0)
    clinic = Clinic.objects.create(name=f"Bench clinic {time.time_ns()}")
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(f"bench{time.time_ns()}")
    Membership.objects.create(user=user, clinic=clinic)
    patient = Patient.objects.create(clinic=clinic, mrn="BENCH-1", name="Bench Patient")
    # A case holds an image once: every phase (warm-up, latency, throughput) submits into cases of its own.
    warm_case, latency_case, throughput_case = (Case.objects.create(patient=patient) for _ in range(3))
    images = bench_images(max(args.images, args.sequential))
    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(
        f"stack: {args.workers} worker process(es), database {db}, broker {settings.REDIS_URL}, model {settings.SKINSITE_MODEL.name}"
    )

    workers = [stack.enter_context(Worker(settings.REDIS_URL, tmp / f"worker{i}.log")) for i in range(args.workers)]

    def submit(path: Path, case: Case) -> int:
        with path.open("rb") as handle:
            return submit_image(case, File(handle, name=path.name), user).pk

    def wait(ids: list[int], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while Analysis.objects.filter(pk__in=ids, status__in=["queued", "running"]).exists():
            if time.monotonic() > deadline:
                sys.exit("timed out waiting for the workers; see their logs in " + str(tmp))
            time.sleep(0.005)

    warm = [submit(path, warm_case) for path in images[: args.workers * 2]]
    wait(warm)  # every worker's first task done
    latencies = []
    for path in images[: args.sequential]:
        pk = submit(path, latency_case)
        wait([pk])
        a = Analysis.objects.get(pk=pk)
        latencies.append((a.finished_at - a.queued_at).total_seconds() * 1000)
        # Its report follows on the same worker: let it finish, so the next image meets an idle worker.
        while not Analysis.objects.filter(pk=pk).exclude(report="").exists():
            time.sleep(0.005)

    ids = []
    started = time.perf_counter()
    ids = [submit(path, throughput_case) for path in images[: args.images]]
    wait(ids)
    elapsed = time.perf_counter() - started
    failed = Analysis.objects.filter(pk__in=ids, status="failed").count()

    model = model_bench(settings.SKINSITE_MODEL, repeats=100, threads=1, include_keras=False)["litert"]
    explain = explanation_ms(images[:30])
    done = list(Analysis.objects.filter(pk__in=ids[:10]).select_related("image__case__patient__clinic"))
    render = []
    for a in done:
        t0 = time.perf_counter()
        reports.render_pdf(a)
        render.append((time.perf_counter() - t0) * 1000)
    rss = {pid: _rss_mb(pid) for w in workers for pid in w.pool_pids()}
    load_seconds = [s for i in range(args.workers) for s in warm_up_seconds(tmp / f"worker{i}.log")]
    logs = [tmp / f"worker{i}.log" for i in range(args.workers)]
    analyse_ms, report_ms = task_ms(logs, "analyse"), task_ms(logs, "render_report")

    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    print(f"warm latency, submit to done ({len(latencies)} one at a time): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print(
        f"throughput ({len(ids)} at once, {args.workers} workers): {len(ids) / elapsed:.1f} images/s, {failed} failed"
    )
    print(
        f"model alone (LiteRT, batch 1, 1 thread): p50 {model['batch1_p50_ms']:.1f} ms, p95 {model['batch1_p95_ms']:.1f} ms"
    )
    print(
        f"what a worker computes per image (one LiteRT call on the companion file: probabilities and activations; "
        f"Grad-CAM, quality gate, overlay PNG), in-process: p50 {explain:.1f} ms"
    )
    print(
        f"queue + database + image I/O overhead: {p50 - explain:.1f} ms per analysis "
        f"(latency p50 minus the worker's computation); latency/model ratio {p50 / model['batch1_p50_ms']:.2f}"
    )
    if analyse_ms:
        print(
            f"inside a worker pool process: analyse p50 {statistics.median(analyse_ms):.1f} ms "
            f"({len(analyse_ms)} tasks), render_report p50 {statistics.median(report_ms or [float('nan')]):.0f} ms "
            f"({len(report_ms)} tasks)"
        )
    for i, seconds in enumerate(load_seconds):
        print(f"worker {i}: model loaded and warmed up in {seconds:.2f} s")
    print(f"PDF report render: median {statistics.median(render):.0f} ms over {len(render)} reports")
    for pid, mb in rss.items():
        print(f"worker pool process {pid}: resident memory {mb:.0f} MB")


def explanation_ms(images: list[Path]) -> float:
    """Median time of what a worker computes per image (workers.tasks.explanation_of: the explainer's one pass
    and the PNG it stores), on images already decoded, as the task has them."""
    from ml.serve.preprocess import load_image
    from workers.tasks import explanation_of

    times = []
    for path in images:
        picture = load_image(path)
        started = time.perf_counter()
        explanation_of(picture)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[3:] or times)


def task_ms(log_files: list[Path], task: str) -> list[float]:
    """How long each run of ``task`` took inside a worker pool process, from Celery's "succeeded in S s" log lines:
    the rest of submit-to-done is the queue, the worker's main process and the submitting side."""
    pattern = re.compile(rf"Task workers\.tasks\.{task}\[[^]]+\] succeeded in ([0-9.e-]+)s")
    return [float(s) * 1000 for f in log_files for s in pattern.findall(f.read_text(errors="replace"))]


def warm_up_seconds(log_file: Path) -> list[float]:
    """The seconds each pool process of a worker took to load and warm up its model, from its log
    (workers.tasks logs "model ... loaded and warmed up in S s")."""
    found = re.findall(r"loaded and warmed up in ([0-9.]+) s", log_file.read_text(errors="replace"))
    return [float(s) for s in found]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
