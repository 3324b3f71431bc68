"""Live source: a kafka-python consumer group that resumes from the offsets stored with state.

Offsets live in the store, written atomically with the state they produced; on assignment the
consumer seeks to them, so records already applied are never applied again, whatever Kafka's own
committed offsets say (those are committed too, after the store, for lag monitoring and tools).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError
from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest
from kafka.structs import OffsetAndMetadata, TopicPartition

from detector.config import KafkaConfig
from detector.errors import SourceError
from detector.sources.base import Record

log = structlog.get_logger(__name__)


def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection and security options shared by consumers and producers."""
    opts: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
    }
    if cfg.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = (
            cfg.sasl_password.get_secret_value() if cfg.sasl_password else None
        )
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_cafile"] = cfg.ssl_cafile
        opts["ssl_certfile"] = cfg.ssl_certfile
        opts["ssl_keyfile"] = cfg.ssl_keyfile
        opts["ssl_check_hostname"] = cfg.ssl_check_hostname
    return opts


def consumer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """The detector's consumer settings (the bench's bare-consumer ceiling uses the same)."""
    return {
        "group_id": cfg.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": cfg.auto_offset_reset,
        "max_poll_records": cfg.max_poll_records,
        "fetch_max_bytes": cfg.fetch_max_bytes,
        "max_partition_fetch_bytes": cfg.max_partition_fetch_bytes,
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "max_poll_interval_ms": cfg.max_poll_interval_ms,
        **client_options(cfg),
    }


def check_access(cfg: KafkaConfig, timeout_s: float = 10.0) -> None:
    """Fail fast and clearly when a broker refuses our TLS set-up or SASL credentials.

    kafka-python 3.0.12 never reports either: it discards the broker's SaslAuthenticate error
    response (it arrives together with the connection close) and retries the bootstrap until
    "Unable to bootstrap". So before the clients are built, this talks to the first bootstrap
    server that answers (TLS handshake, SaslHandshake v1, SaslAuthenticate v1) and raises
    ``SourceError`` on a definite verdict. An unreachable broker is left to the clients.
    """
    if cfg.security_protocol == "PLAINTEXT":
        return
    sasl = cfg.security_protocol.startswith("SASL_")
    if sasl and (not cfg.sasl_username or cfg.sasl_password is None):
        raise SourceError(
            f"kafka.security_protocol {cfg.security_protocol} needs kafka.sasl_username and "
            f"kafka.sasl_password (env DETECTOR_KAFKA__SASL_PASSWORD)"
        )
    for server in cfg.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue
        try:
            if cfg.security_protocol.endswith("SSL"):
                sock = _tls_context(cfg).wrap_socket(sock, server_hostname=host)
            if sasl:
                _sasl_probe(cfg, sock, host, server)
            return
        except ssl.SSLCertVerificationError as e:
            raise SourceError(
                f"TLS to Kafka at {server} failed: the broker's certificate was not accepted "
                f"({e.verify_message}); check kafka.ssl_cafile and kafka.ssl_check_hostname"
            ) from None
        except (OSError, KafkaError) as e:
            # Reset, timeout, refused mid-way: not a verdict; the clients will retry and report.
            log.warning("kafka access probe inconclusive", server=server, error=str(e))
        finally:
            sock.close()


def _tls_context(cfg: KafkaConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
    ctx.check_hostname = cfg.ssl_check_hostname
    if cfg.ssl_certfile:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return ctx


def _roundtrip(sock: socket.socket, proto: Any, request: Any) -> Any:
    proto.send_request(request)
    sock.sendall(proto.send_bytes())
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        responses = proto.receive_bytes(data)
        if responses:
            return responses[0][1]


def _sasl_probe(cfg: KafkaConfig, sock: socket.socket, host: str, server: str) -> None:
    mech_name = cfg.sasl_mechanism or "PLAIN"
    proto = KafkaProtocol(client_id=cfg.client_id)
    hs = _roundtrip(sock, proto, SaslHandshakeRequest(mechanism=mech_name, version=1))
    if hs.error_code or mech_name not in hs.mechanisms:
        raise SourceError(
            f"Kafka at {server} does not enable SASL mechanism {mech_name}; it offers "
            f"{', '.join(hs.mechanisms) or 'none'} (kafka.sasl_mechanism)"
        )
    password = cfg.sasl_password.get_secret_value() if cfg.sasl_password else ""
    mech = get_sasl_mechanism(mech_name)(
        host=host,
        security_protocol=cfg.security_protocol,
        sasl_mechanism=mech_name,
        sasl_plain_username=cfg.sasl_username,
        sasl_plain_password=password,
    )
    refused = (
        f"Kafka at {server} refused the SASL credentials: authentication failed for user "
        f"{cfg.sasl_username!r} with mechanism {mech_name}"
    )
    hint = "check kafka.sasl_username and kafka.sasl_password (DETECTOR_KAFKA__SASL_PASSWORD)"
    while not mech.is_done():
        resp = _roundtrip(
            sock, proto, SaslAuthenticateRequest(auth_bytes=mech.auth_bytes(), version=1)
        )
        if resp.error_code:
            raise SourceError(f"{refused} ({resp.error_message}); {hint}")
        try:
            mech.receive(resp.auth_bytes)
        except (KafkaError, ValueError) as e:  # e.g. a SCRAM server signature that does not match
            raise SourceError(f"{refused} ({type(e).__name__}); {hint}") from None
    if not mech.is_authenticated():
        raise SourceError(f"{refused}; {hint}")


# How long the pipeline waits for the next batch while it holds records for the other instances:
# they move on in milliseconds, and a full poll timeout per bucket would make a shared backlog
# crawl. Past it, the pipeline runs again on an empty batch.
_WAITING_POLL_MS = 20
# Kafka's committed offsets only feed lag tools (the store holds the ones the detector resumes
# from): committed at most this often, not after every batch (a broker round trip each).
_COMMIT_EVERY_S = 1.0
# How often the lag asks the brokers for the partitions' end offsets (one ListOffsets request).
_END_OFFSETS_EVERY_S = 2.0
# Batches polled ahead of the pipeline: one overlaps the next fetch and decode with the
# pipeline's Redis round trips; more would only hold more memory.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Polled:
    """One poll's records, with the consumer's view right after that poll."""

    records: list[Record]
    caught_up: frozenset[int]
    """Assigned partitions with nothing more to fetch once these records are processed."""
    partitions: frozenset[int]
    """The topic's partitions."""
    lag: dict[int, int]
    """Records behind the partition's end, per assigned partition."""
    generation: int


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, src: KafkaSource) -> None:
        self._src = src

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._src._revoked([tp.partition for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._src._assigned([tp.partition for tp in assigned])


class KafkaSource:
    """Polls in a fetch thread that alone uses the consumer; the pipeline gets its batches.

    kafka-python fetches and decodes records (CRC, record batches) in the thread that polls, so
    polling ahead overlaps that work and the broker round trip with the pipeline's. The
    pipeline's thread never calls the consumer: each batch carries the consumer's view after
    its poll (caught-up partitions, lag), commits are handed over, seeks are requested.

    Between batches the pipeline holds no turn: rebalance callbacks (kafka-python's IO thread,
    inside the fetch thread's poll) take it, so they run between two batches as they did when
    the pipeline polled itself. Each rebalance and each seek starts a new generation: batches
    polled before it are dropped unprocessed; their records are fetched again from the offsets
    sought (the store's for an assignment), by whichever instance owns them now.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        stored_offsets: Callable[[], dict[int, int]],
        on_assign: Callable[[list[int]], None],
        on_revoke: Callable[[list[int]], None],
    ) -> None:
        self.name = f"kafka:{cfg.group_id}:{cfg.topics.events}"
        self._cfg = cfg
        self._topic = cfg.topics.events
        self._stored = stored_offsets
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._stop = threading.Event()
        self._ends: dict[int, int] = {}
        self._ends_at = 0.0
        self._commit_at = 0.0
        # Guards what both threads touch: the generation, the requested seek, offsets to commit.
        self._lock = threading.Lock()
        self._generation = 0
        self._seek_to: dict[int, int] | None = None
        # The last assignment's partitions and the store's offsets they were sought to.
        self._sought: tuple[list[int], dict[int, int]] = ([], {})
        self._to_commit: dict[int, int] = {}
        # Held by the pipeline while it works on a batch, and by the rebalance callbacks.
        self._turn = threading.Lock()
        self._queue: queue.Queue[Polled | BaseException] = queue.Queue(PREFETCH_BATCHES)
        self._fetcher: threading.Thread | None = None
        self._c = self._consumer()

    def _consumer(self) -> Any:
        cfg = self._cfg
        try:
            return KafkaConsumer(**consumer_options(cfg))
        except KafkaError as e:
            raise SourceError(
                f"cannot connect to Kafka at {cfg.bootstrap_servers} "
                f"({cfg.security_protocol}): {type(e).__name__}: {e}"
            ) from None

    def _new_generation(self) -> None:
        with self._lock:
            self._generation += 1
            self._seek_to = None  # an assignment seeks every partition itself

    def _assigned(self, partitions: list[int]) -> None:
        # The pipeline loads the store's progress for these partitions first, so that the
        # offsets below cover them (before, it knew none of them here: nothing was sought).
        # Every partition is then sought: kafka-python keeps its fetch position for a partition
        # this instance already had, which is past the records it fetched and the revocation
        # dropped unapplied from the alignment buffers (and from the prefetched batches); and
        # Kafka's committed offsets, where a new partition would start, may be ahead of the
        # store's if Redis lost its last writes.
        self._new_generation()
        with self._turn:
            self._on_assign(partitions)
            self._sought = (partitions, self._stored())
            self._seek(*self._sought)
        log.info("partitions assigned", topic=self._topic, partitions=sorted(partitions))

    def _seek(self, partitions: Iterable[int], stored: dict[int, int]) -> None:
        for p in partitions:
            tp = TopicPartition(self._topic, p)
            if p in stored:
                self._c.seek(tp, stored[p])
            elif self._cfg.auto_offset_reset == "earliest":
                self._c.seek_to_beginning(tp)  # nothing of it in the store yet
            else:
                self._c.seek_to_end(tp)

    def _revoked(self, partitions: list[int]) -> None:
        # Runs on kafka-python's IO thread, where blocking commits are not allowed; the store
        # holds the authoritative offsets anyway, written with the state of every batch. The new
        # generation makes the pipeline drop what was polled ahead; the turn waits for the batch
        # it is on, so that batch is fully applied to the store before the partitions go.
        log.info("partitions revoked", topic=self._topic, partitions=sorted(partitions))
        self._new_generation()
        with self._turn:
            with self._lock:
                for p in partitions:
                    self._to_commit.pop(p, None)  # the new owner commits them now
            self._on_revoke(partitions)

    def stop(self) -> None:
        self._stop.set()

    def batches(self, waiting: Callable[[], bool] = lambda: False) -> Generator[Polled, None, None]:
        """Polled batches, the turn held while the caller works on one; while ``waiting()``
        (records held for the group clock), an empty batch every 20 ms if nothing comes."""
        self._c.subscribe([self._topic], listener=_Listener(self))
        self._fetcher = threading.Thread(target=self._fetch, name="kafka-fetch", daemon=True)
        self._fetcher.start()
        last: Polled | None = None
        while not self._stop.is_set():
            timeout = _WAITING_POLL_MS if waiting() else self._cfg.poll_timeout_ms
            try:
                item = self._queue.get(timeout=timeout / 1000)
            except queue.Empty:
                if last is None or not waiting():
                    continue  # the fetch thread hands over an empty batch after each idle poll
                # The view of the last batch still holds: positions move only with records.
                item = replace(last, records=[])
            if isinstance(item, BaseException):
                raise item
            with self._turn:
                if item.generation != self._generation:
                    continue  # polled before a rebalance or a seek: fetched again
                last = item
                yield item

    def _fetch(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    seek_to, self._seek_to = self._seek_to, None
                    before = self._generation
                if seek_to is not None:
                    self._seek(self._assignment(), seek_to)
                try:
                    polled = self._c.poll(
                        timeout_ms=self._cfg.poll_timeout_ms,
                        max_records=self._cfg.max_poll_records,
                    )
                except KafkaError as e:
                    if not e.retriable:
                        raise
                    # A broker restart or a network blip (connection refused while it finds the
                    # coordinator): kafka-python reconnects on a later poll; nothing was consumed.
                    log.warning("kafka poll failed; retrying", error=str(e), retry_in_s=0.5)
                    self._stop.wait(0.5)
                    continue
                with self._lock:
                    if self._seek_to is not None:
                        continue  # the pipeline asked for a seek meanwhile: these go stale
                    generation = self._generation
                if generation != before and polled:
                    # A rebalance ran inside this poll: records fetched before it must not
                    # pass for records after it. Drop them all, repeat the assignment's seeks.
                    parts, stored = self._sought
                    self._seek(self._assignment() & set(parts), stored)
                    continue
                self._maybe_commit()
                item = Polled(
                    [
                        Record(m.value, m.topic, m.partition, m.offset, m.key, m.timestamp)
                        for msgs in polled.values()
                        for m in msgs
                    ],
                    self._caught_up(),
                    frozenset(self._c.partitions_for_topic(self._topic) or ()),
                    self._lag(),
                    generation,
                )
                self._put(item)
        except BaseException as e:  # handed to the pipeline's thread, which raises it
            self._put(e)

    def _put(self, item: Polled | BaseException) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def _assignment(self) -> set[int]:
        return {tp.partition for tp in self._c.assignment()}

    def _end(self, tp: TopicPartition) -> int | None:
        """The partition's end as last known: from fetch responses or from a ListOffsets.

        kafka-python learns a partition's high watermark only from its fetch responses, and
        does not fetch a partition again while records it fetched wait to be polled: with a
        backlog, that value stays far behind the real end, and lag looked small while it grew.
        """
        hw: int | None = self._c.highwater(tp)
        end = self._ends.get(tp.partition)
        if hw is None or end is None:
            return hw if end is None else end
        return max(hw, end)

    def _lag(self) -> dict[int, int]:
        tps = list(self._c.assignment())
        now = time.monotonic()
        if tps and now >= self._ends_at:
            self._ends_at = now + _END_OFFSETS_EVERY_S
            try:
                ends = self._c.end_offsets(tps, timeout_ms=1000)
                self._ends = {tp.partition: int(o) for tp, o in ends.items()}
            except KafkaError as e:
                log.debug("end offsets not refreshed", error=str(e))
        out = {}
        for tp in tps:
            end = self._end(tp)
            if end is not None:
                out[tp.partition] = max(0, end - self._c.position(tp))
        return out

    def _caught_up(self) -> frozenset[int]:
        """Assigned partitions whose records up to the end have all been fetched."""
        done = set()
        for tp in self._c.assignment():
            end = self._end(tp)
            if end is not None and self._c.position(tp) >= end:
                done.add(tp.partition)
        return frozenset(done)

    def seek(self, offsets: dict[int, int]) -> None:
        """Rewind our partitions to the store's offsets (after an error, to retry cleanly).

        One the store holds nothing of goes back to where it started from (its first records
        may have been fetched, and not applied). Batches polled before are dropped.
        """
        with self._lock:
            self._generation += 1
            self._seek_to = offsets

    def commit(self, offsets: dict[int, int]) -> None:
        """Offsets for Kafka (lag tools), committed by the fetch thread at most once a second."""
        with self._lock:
            self._to_commit.update(offsets)

    def _maybe_commit(self) -> None:
        t = time.monotonic()
        with self._lock:
            if not self._to_commit or t < self._commit_at:
                return
            pending, self._to_commit = self._to_commit, {}
        self._commit_at = t + _COMMIT_EVERY_S
        try:
            self._c.commit(
                {
                    TopicPartition(self._topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in pending.items()
                }
            )
        except KafkaError as e:
            # The store holds the authoritative offsets; Kafka's are for lag tools only.
            log.warning("kafka offset commit failed", error=str(e))

    def close(self) -> None:
        self._stop.set()
        if self._fetcher is not None:
            self._fetcher.join()
        self._commit_at = 0.0
        self._maybe_commit()
        with contextlib.suppress(KafkaError):
            self._c.close(autocommit=False)


def wait_for_kafka(cfg: KafkaConfig, timeout_s: float) -> None:
    """Fail with a clear error if the brokers do not answer a metadata request in time."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            c = KafkaConsumer(**client_options(cfg))
            c.topics()
            c.close()
            return
        except KafkaError as e:
            last = e
            time.sleep(0.5)
    raise SourceError(
        f"Kafka at {cfg.bootstrap_servers} did not answer within {timeout_s}s: {last}"
    )
