"""Wait until a Kafka broker really serves requests (used by stack.sh).

An open TCP port is not enough: the KRaft broker accepts connections before it
has registered with its controller. "Ready" here means a metadata request
succeeds, lists at least one unfenced broker, and names an active controller.

Polls in-process (one interpreter start instead of one per attempt) and gives
up early if the broker process (--pid) dies, so a crashed broker is reported
at once rather than after the full timeout.

Exit codes: 0 ready, 1 timed out, 2 broker process died, 3 kafka-python missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

try:
    from kafka.admin import KafkaAdminClient
except ImportError:  # reported as exit code 3; stack.sh then falls back
    KafkaAdminClient = None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _probe(bootstrap: str) -> str | None:
    """Return None when ready, else a short reason."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="stack-ready-probe",
            bootstrap_timeout_ms=2000,
            request_timeout_ms=3000,
        )
    except Exception as exc:
        return f"no connection ({type(exc).__name__})"
    try:
        cluster = admin.describe_cluster()
    except Exception as exc:
        return f"metadata request failed ({type(exc).__name__}: {exc})"
    finally:
        admin.close()
    brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
    if not brokers:
        return "no unfenced broker in metadata yet"
    if cluster.get("controller_id", -1) < 0:
        return "no active controller yet"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:29092")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--pid", type=int, default=None, help="broker pid to watch")
    args = parser.parse_args()

    # kafka-python logs every refused connection at ERROR/WARNING; while the
    # broker boots those are expected and would only clutter the console.
    logging.basicConfig(level=logging.CRITICAL)

    if KafkaAdminClient is None:
        print("kafka_ready: kafka-python is not installed in this interpreter", file=sys.stderr)
        return 3

    deadline = time.monotonic() + args.timeout
    reason: str | None = "not probed"
    while True:
        if not _alive(args.pid):
            print(f"kafka_ready: broker process {args.pid} exited", file=sys.stderr)
            return 2
        reason = _probe(args.bootstrap)
        if reason is None:
            return 0
        if time.monotonic() >= deadline:
            print(f"kafka_ready: not ready after {args.timeout:.0f}s: {reason}", file=sys.stderr)
            return 1
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
