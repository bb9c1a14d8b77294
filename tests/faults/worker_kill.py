"""A worker killed with SIGKILL in the middle of an analysis, during a stream of submissions.

    python -m tests.faults.worker_kill [--images 20]

Two workers, each analysis slowed to 1 s (tests/fault_injection) so the kill lands mid-run. Once both are
busy, one worker and its pool process are killed at once (as the OOM killer would). The survivor's sweeper
puts the dead worker's running analysis back after the hard time limit (10 s here) and resends what the dead
one had taken from the queue; the claim (queued -> running) keeps a second delivery from running twice.
"""

import sys
from contextlib import ExitStack

from tests import stack
from tests.faults.common import Stream, arguments, open_stack, verdict

NAME = "worker-kill"


def main() -> int:
    args = arguments(__doc__.split("\n")[0], images=20)
    with ExitStack() as exits:
        folder = open_stack(exits, NAME, args.logs)
        redis = stack.RedisServer().start()
        exits.callback(redis.stop)
        stack.configure(folder, f"sqlite:///{folder / 'db.sqlite3'}", redis.url)
        from analysis.models import Analysis
        from workers.process import Worker

        env = stack.worker_env(SKINSITE_TEST_SLOW_ANALYSIS="1")
        workers = [
            exits.enter_context(Worker(redis.url, folder / f"worker{i}.log", **env)) for i in range(args.workers)
        ]
        web = exits.enter_context(stack.Web(folder / "web.log"))
        tenant = stack.seed_tenant()
        uploader = stack.Uploader(web.url, tenant.token)
        images = stack.ham10000_images(args.images)

        stream = Stream(uploader, tenant.cases[0], images, args.interval).start()
        stack.wait_until(lambda: Analysis.objects.filter(status="running").count() >= 2, 60, "two running analyses")
        running = list(Analysis.objects.filter(status="running").values_list("pk", flat=True))
        victim = workers[0]
        victim.kill()
        print(
            f"[{NAME}] SIGKILLed worker pid {victim.process.pid} (and its pool) while analyses {running} ran",
            flush=True,
        )
        result, seconds = stack.settle(stream, uploader, args.timeout)
        return verdict(NAME, uploader, result, f"; all finished {seconds:.0f} s after the kill")


if __name__ == "__main__":
    sys.exit(main())
