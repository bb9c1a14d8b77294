"""Redis stopped for 30 s during a stream of submissions, then started again empty.

    python -m tests.faults.redis_outage [--outage 30] [--images 40] [--interval 1]

Uploads must go on being answered quickly while the broker is away: the image and its queued analysis are
saved, and sending the task gives up within about a second (analysis/signals.py, workers/tasks.py). The
Redis that comes back has lost every message (nothing is persisted), so the workers' sweeper resends what
has been queued for longer than QUEUED_RESEND_AFTER (5 s here) and puts back what was running.
"""

import sys
import time
from contextlib import ExitStack

from tests import stack
from tests.faults.common import Stream, arguments, open_stack, verdict

NAME = "redis-outage"


def main() -> int:
    args = arguments(__doc__.split("\n")[0], images=40, interval=1.0, outage=30.0, outage_after=4.0)
    with ExitStack() as exits:
        folder = open_stack(exits, NAME, args.logs)
        redis = stack.RedisServer().start()
        exits.callback(redis.stop)
        stack.configure(folder, f"sqlite:///{folder / 'db.sqlite3'}", redis.url)
        from workers.process import Worker

        env = stack.worker_env()
        for i in range(args.workers):
            exits.enter_context(Worker(redis.url, folder / f"worker{i}.log", **env))
        web = exits.enter_context(stack.Web(folder / "web.log"))
        tenant = stack.seed_tenant()
        uploader = stack.Uploader(web.url, tenant.token)
        images = stack.ham10000_images(args.images)

        stream = Stream(uploader, tenant.cases[0], images, args.interval).start()
        time.sleep(args.outage_after)
        before = len(uploader.latencies)
        redis.stop()
        print(f"[{NAME}] Redis stopped after {before} uploads", flush=True)
        time.sleep(args.outage)
        during = uploader.latencies[before:]
        redis.start()
        print(
            f"[{NAME}] Redis started again (empty) after {args.outage:.0f} s; {len(during)} uploads meanwhile",
            flush=True,
        )
        result, seconds = stack.settle(stream, uploader, args.timeout)
        extra = (
            f"; during the outage {len(during)} uploads answered, max {max(during, default=float('nan')):.2f} s each"
            f"; all finished {seconds:.0f} s after Redis came back"
        )
        code = verdict(NAME, uploader, result, extra)
        if not during or max(during) > 5:
            print(f"[{NAME}] FAILED: uploads must go on, each answered within 5 s, while Redis is away")
            code = 1
        return code


if __name__ == "__main__":
    sys.exit(main())
