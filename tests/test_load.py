"""The load script itself, small: 20 submissions from 4 clients through gunicorn and two workers, no errors,
nothing lost (the full 200 from 20 clients is `make load`)."""

import re

import pytest

from tests.test_faults import Script
from workers import app, tasks


@pytest.mark.stack
def test_the_load_script_submits_polls_and_reports_no_errors_and_no_loss(tmp_path):
    _, output = Script("tests.load", "--images", "20", "--clients", "4", folder=tmp_path).result(timeout=300)
    assert "submitted 20 of 20, done 20, failed 0, errors 0, lost 0" in output
    assert re.search(r"upload latency: p50 \d+ ms, p95 \d+ ms, p99 \d+ ms", output)
    assert re.search(r"submit to done: p50 [\d.]+ s, p95 [\d.]+ s, p99 [\d.]+ s", output)
    assert "OK: 0 errors, 0 lost" in output


def test_under_a_burst_queued_analyses_go_before_reports(broker):
    # Reports are sent at the lowest priority: a burst of uploads gets every result first, then the PDFs
    # (measured with tests/load.py on PostgreSQL: submit-to-done p95 22.5 s without, 3.0 s with).
    tasks.render_report.delay(1)
    tasks.analyse.delay(2)
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        queue.close()
    assert [first.headers["task"], second.headers["task"]] == ["workers.tasks.analyse", "workers.tasks.render_report"]
