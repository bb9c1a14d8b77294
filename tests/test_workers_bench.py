"""workers.bench reads what it prints about the workers from their own logs."""

from workers.bench import task_ms, warm_up_seconds


def test_task_times_come_from_celerys_succeeded_lines_of_that_task_only(tmp_path):
    log = tmp_path / "worker0.log"
    log.write_text(
        "[2026-12-08 03:56:50,101: INFO/ForkPoolWorker-1] Task workers.tasks.analyse[1f2e] succeeded in 0.0391s: 'done'\n"
        "[2026-12-08 03:56:50,401: INFO/ForkPoolWorker-1] Task workers.tasks.render_report[9a0b] succeeded in "
        "0.257s: 'done'\n"
        "[2026-12-08 03:56:50,441: INFO/ForkPoolWorker-1] Task workers.tasks.analyse[77c1] succeeded in 2.5e-02s: "
        "'skipped: gone, or another worker has it'\n"
        "[2026-12-08 03:56:50,500: INFO/ForkPoolWorker-1] model v1 loaded and warmed up in 0.34 s\n"
    )
    assert [round(ms, 1) for ms in task_ms([log], "analyse")] == [39.1, 25.0]
    assert [round(ms) for ms in task_ms([log], "render_report")] == [257]
    assert warm_up_seconds(log) == [0.34]
