"""The ``simulate`` CLI: files, declarations, determinism across processes, and Kafka output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from detector.simulate.base import parse_ts
from detector.simulate.command import main

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "127.0.0.1:29092"


def _run_cli(*args: str, hashseed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "detector.simulate.command", "simulate", *args, "--out", "-"],
        check=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
    )
    return out.stdout


def test_cli_writes_events_truth_and_campaign_snippet(tmp_path: Path) -> None:
    ev, truth, camp = tmp_path / "ev.jsonl", tmp_path / "truth.json", tmp_path / "c.yaml"
    rc = main(
        [
            "simulate",
            "--seed",
            "4",
            "--hours",
            "30",
            "--incidents",
            "leak,bot_farm",
            "--benign",
            "none",
            "--out",
            str(ev),
            "--truth",
            str(truth),
            "--campaigns-out",
            str(camp),
        ]
    )
    assert rc == 0
    lines = ev.read_bytes().splitlines()
    t = json.loads(truth.read_text())
    assert len(lines) == t["events"] > 10_000
    assert [i["kind"] for i in t["incidents"]] in (["leak", "bot_farm"], ["bot_farm", "leak"])
    assert t["start"] == "2026-01-12T00:00:00.000Z" and t["end"] == "2026-01-13T06:00:00.000Z"
    assert yaml.safe_load(camp.read_text())["campaigns"] == {
        k: {"kind": v} for k, v in t["campaigns"].items()
    }
    first = orjson.loads(lines[0])
    assert first["ts"].startswith("2026-01-12T00:")


def test_cli_undeclared_writes_empty_declarations_and_same_stream(tmp_path: Path) -> None:
    a, b, camp = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.yaml"
    assert main(["simulate", "--hours", "8", "--out", str(a), "--declared"]) == 0
    assert (
        main(
            [
                "simulate",
                "--hours",
                "8",
                "--out",
                str(b),
                "--undeclared",
                "--campaigns-out",
                str(camp),
            ]
        )
        == 0
    )
    assert a.read_bytes() == b.read_bytes()
    assert yaml.safe_load(camp.read_text()) == {"campaigns": {}}


def test_cli_rejects_unknown_kind_and_naive_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--incidents", "leak,nope", "--out", os.devnull]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["simulate", "--start", "2026-01-12T00:00:00", "--out", os.devnull]) == 2


def test_cli_start_now_ends_the_stream_at_the_wall_clock(tmp_path: Path) -> None:
    out = tmp_path / "now.jsonl"
    before = time.time()
    assert (
        main(
            [
                "simulate",
                "--start",
                "now",
                "--hours",
                "2",
                "--incidents",
                "none",
                "--benign",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    last = orjson.loads(out.read_bytes().splitlines()[-1])
    t = parse_ts(last["ts"]) / 1000
    assert before - 600 < t <= time.time()


def test_cli_rate_paces_output_by_wall_clock(tmp_path: Path) -> None:
    t0 = time.monotonic()
    assert (
        main(
            [
                "simulate",
                "--hours",
                "8",
                "--max-events",
                "300",
                "--rate",
                "1000",
                "--out",
                str(tmp_path / "r.jsonl"),
            ]
        )
        == 0
    )
    assert time.monotonic() - t0 >= 0.29
    assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == 300


def test_same_seed_is_byte_identical_across_processes_and_hash_seeds() -> None:
    args = ("--seed", "8", "--hours", "14", "--scale", "0.5")
    a = _run_cli(*args, hashseed="1")
    b = _run_cli(*args, hashseed="2")
    assert a == b and len(a) > 50_000
    assert a != _run_cli("--seed", "9", "--hours", "14", "--scale", "0.5", hashseed="1")


def _kafka_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 29092), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.stack
@pytest.mark.skipif(not _kafka_up(), reason="no Kafka broker on 127.0.0.1:29092")
def test_kafka_output_produces_every_event_keyed_by_order_id(tmp_path: Path) -> None:
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"sim-test-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="sim-test")
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    try:
        out = tmp_path / "ev.jsonl"
        assert (
            main(
                [
                    "simulate",
                    "--seed",
                    "6",
                    "--hours",
                    "12",
                    "--max-events",
                    "2000",
                    "--kafka-topic",
                    topic,
                    "--bootstrap",
                    BOOTSTRAP,
                    "--compression",
                    "lz4",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        expected = {orjson.loads(line)["event_id"]: line for line in out.read_bytes().splitlines()}
        assert len(expected) == 2000
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=BOOTSTRAP,
            group_id=None,
            auto_offset_reset="earliest",
            consumer_timeout_ms=15_000,
        )
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + 60
        for msg in consumer:
            ev = orjson.loads(msg.value)
            assert msg.key == ev["order_id"].encode()
            got[ev["event_id"]] = msg.value
            if len(got) == 2000 or time.monotonic() > deadline:
                break
        consumer.close()
        assert got.keys() == expected.keys()
        assert all(orjson.loads(got[k]) == orjson.loads(v) for k, v in expected.items())
    finally:
        admin.delete_topics([topic])
        admin.close()
