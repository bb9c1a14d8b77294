"""What every fault script shares: its arguments, its stack, its stream of submissions and its verdict."""

import argparse
import os
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from tests import stack


def arguments(description: str, images: int, **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=images, help="submissions in the stream")
    parser.add_argument("--interval", type=float, default=defaults.pop("interval", 0.25), help="seconds between them")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the results at most")
    parser.add_argument("--logs", type=Path, help="copy the web, worker and database logs into this folder at the end")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser.parse_args()


class Stream:
    """Submits images one after another from a thread, so the script can inject its fault meanwhile."""

    def __init__(self, uploader: stack.Uploader, case: int, images: list[Path], interval: float):
        self.uploader, self.case, self.images, self.interval = uploader, case, images, interval
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        for path in self.images:
            self.uploader.submit(self.case, path)
            self.sent += 1
            time.sleep(self.interval)

    def start(self) -> "Stream":
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join()


def open_stack(exits: ExitStack, name: str, logs: Path | None = None) -> Path:
    folder = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix=f"skinsite-{name}-")))
    if os.geteuid() == 0:
        os.chmod(folder, 0o755)  # a private PostgreSQL runs as the postgres user and must reach its folder
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
        exits.callback(lambda: [shutil.copy(log, logs) for log in folder.rglob("*.log")])
    return folder


def verdict(name: str, uploader: stack.Uploader, result: stack.Tally, extra: str = "") -> int:
    latency = uploader.latencies
    print(f"[{name}] {result.line()}")
    print(
        f"[{name}] uploads: {len(uploader.acknowledged)} acknowledged, {len(uploader.errors)} never acknowledged, "
        f"{uploader.retries} retries {dict(uploader.answers)}; upload latency p50 {stack.percentile(latency, 50):.2f} s, "
        f"max {max(latency, default=float('nan')):.2f} s{extra}"
    )
    for error in uploader.errors[:5]:
        print(f"[{name}]   not acknowledged: {error}")
    for reason, n in result.failures.most_common(5):
        print(f"[{name}]   failed {n}x: {reason}")
    if result.unfinished_ids:
        print(f"[{name}]   images without a finished analysis: {result.unfinished_ids[:20]}")
    ok = result.ok and not uploader.errors
    if ok:
        print(f"[{name}] OK: every acknowledged image has exactly one finished analysis")
    else:
        print(f"[{name}] FAILED: lost, duplicated, failed or unacknowledged submissions (see above)")
    return 0 if ok else 1
