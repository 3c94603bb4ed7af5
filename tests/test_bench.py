"""What bench/pipeline.py sends is what the app reads: its notifications and its broken ones."""

from __future__ import annotations

import json

import pytest

from bench import pipeline as bench
from moderation.imm import notifications
from moderation.imm.pipeline import TaskMessage


@pytest.mark.parametrize("suggestion", ["pass", "review", "block"])
def test_the_benchmarks_notification_parses_as_the_endpoint_reads_it(suggestion):
    body = bench.envelope("ImageModeration-abc", "moderation-local", suggestion, 7)

    message = TaskMessage.parse(notifications.unwrap(body, "application/json"))

    assert message.task_id == "ImageModeration-abc"
    assert message.status == "Succeeded"
    assert message.verdict is not None
    assert message.verdict.suggestion == suggestion
    assert bench.ROUTES[suggestion] in {"approved", "awaiting_review", "rejected"}


@pytest.mark.parametrize("body", bench.MALFORMED)
def test_each_malformed_body_of_the_benchmark_is_refused_as_bad_input(body):
    with pytest.raises((notifications.Refused, ValueError)) as refused:
        TaskMessage.parse(notifications.unwrap(body, "application/json"))

    if isinstance(refused.value, notifications.Refused):
        assert refused.value.status == 400


def test_a_baseline_run_is_given_every_size_of_this_one(monkeypatch, tmp_path):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        out = command[command.index("--json") + 1]
        with open(out, "w") as f:
            json.dump({"commit": "x"}, f)

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr("sys.argv", ["pipeline.py", "--quick", "--seconds", "3"])
    args = bench.parse_args()

    assert bench.run_in(tmp_path, "postgres://h/db_baseline", args) == {"commit": "x"}
    (command,) = calls
    assert command[1] == str(tmp_path / "bench" / "pipeline.py")
    options = dict(zip(command[2:-5:2], command[3:-5:2], strict=True))
    assert options == {
        "--latency-ms": "100.0",
        "--images": "300",
        "--tasks": "300",
        "--in-flight": "32",
        "--seconds": "3.0",
        "--waiting": "2000",
        "--log-entries": "20000",
        "--backlog": "5000",
        "--seed": "20261201",
    }
    assert command[-5:-1] == ["--measure", "--emulator-root", str(bench.ROOT), "--json"]
