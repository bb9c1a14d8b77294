"""PostgreSQL restarted during a stream of submissions.

    python -m tests.faults.postgres_restart [--down 5] [--images 30]

A private cluster (initdb into a temporary folder, its own port; never the machine's server) is stopped
(`pg_ctl stop -m fast`, which cuts every connection) and started again `--down` seconds later. Web requests
meanwhile answer 503 with Retry-After (analysis/middleware.py, analysis/api.py), or the connection drops;
the client retries, and a retry of an upload that was in fact stored is told "already in this case, image N".
The workers' database errors are retried (workers/tasks.py) and the sweeper survives them. Skips (exit 0,
saying why) where no PostgreSQL server binaries are installed.
"""

import sys
import time
from contextlib import ExitStack

from tests import stack
from tests.faults.common import Stream, arguments, open_stack, verdict

NAME = "postgres-restart"


def main() -> int:
    args = arguments(__doc__.split("\n")[0], images=30, interval=0.3, down=5.0, restart_after=3.0)
    if reason := stack.PostgresCluster.unavailable_reason():
        print(f"[{NAME}] SKIPPED: {reason}")
        return 0
    with ExitStack() as exits:
        folder = open_stack(exits, NAME, args.logs)
        postgres = stack.PostgresCluster(folder / "pg").init()
        exits.callback(postgres.stop, "immediate")
        redis = stack.RedisServer().start()
        exits.callback(redis.stop)
        stack.configure(folder, postgres.create_database("skinsite"), redis.url)
        from django.db import connection

        from workers.process import Worker

        # Analyses slowed to 1 s, so a backlog is being worked on when the server goes away.
        env = stack.worker_env(SKINSITE_TEST_SLOW_ANALYSIS="1")
        for i in range(args.workers):
            exits.enter_context(Worker(redis.url, folder / f"worker{i}.log", **env))
        web = exits.enter_context(stack.Web(folder / "web.log"))
        tenant = stack.seed_tenant()
        connection.close()  # this script's own connection would die with the server anyway
        uploader = stack.Uploader(web.url, tenant.token)
        images = stack.ham10000_images(args.images)

        stream = Stream(uploader, tenant.cases[0], images, args.interval).start()
        time.sleep(args.restart_after)
        postgres.stop("fast")
        print(f"[{NAME}] PostgreSQL stopped after {len(uploader.latencies)} uploads", flush=True)
        time.sleep(args.down)
        postgres.start()
        print(f"[{NAME}] PostgreSQL started again after {args.down:.0f} s", flush=True)
        result, seconds = stack.settle(stream, uploader, args.timeout)
        logs = "".join(p.read_text(errors="replace") for p in folder.glob("worker*.log"))
        extra = (
            f"; all finished {seconds:.0f} s after the restart; workers: {logs.count(' retry: Retry in ')} task "
            f"retries, {logs.count('lost analyses found')} sweeper resends, {logs.count('sweeper pass failed')} "
            "failed sweeps survived"
        )
        return verdict(NAME, uploader, result, extra)


if __name__ == "__main__":
    sys.exit(main())
