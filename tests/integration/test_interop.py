"""The service among clients nobody here wrote: librdkafka and Apache Kafka's Java clients.

The rest of the suite produces and reads with aiokafka, the service's own client, so it cannot
show that the service reads what other producers write or that other readers take what it
writes. Here the upstream producer is librdkafka (confluent-kafka) or the Java console producer
of the Kafka distribution, and results are read back by librdkafka or the Java console consumer
(with isolation.level=read_committed). Every input codec, null keys, tombstones, unknown
headers, a stored batch of thousands of records, and a transactional upstream that aborts
are covered; the codec of what the service writes is checked on the stored batches
themselves (a consumer would decompress it out of sight).

Two services run for the whole module, on the tiny model: at-least-once with lz4 results and
exactly-once with zstd results; `test_results_use_the_configured_codec` starts its own for the
other codecs. Nothing is timed; deadlines are generous for a shared 2-core machine.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamer.kafka.probe import run_in_fresh_loop
from tests.integration.interop_clients import (
    CODECS,
    Seen,
    batches,
    end_offsets,
    event_id_of,
    java_consume,
    java_line,
    java_produce,
    offset_ranges,
    rdkafka_produce,
    rdkafka_read,
    written_between,
)
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    create_topics,
    query_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

UNKNOWN_HEADERS = [
    ("trace-id", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("trace-id", b"repeated key"),
    ("binary", bytes(range(256))),
    ("no-value", None),
]


def _service(bootstrap: str, artifact: Path, log: Path, env: dict[str, str]) -> ServiceProcess:
    topics = run_in_fresh_loop(
        lambda: create_topics(bootstrap, partitions=2, prefix="interop-"), 60.0
    )
    return ServiceProcess(
        bootstrap=bootstrap, artifact=artifact, topics=topics, log_path=log,
        group_id=f"interop-{uuid.uuid4().hex[:8]}", routes="intent", extra_env=env,
    ).start()  # fmt: skip


@pytest.fixture(scope="module")
def alos(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The module's at-least-once service, writing lz4 results and dead letters."""
    log = tmp_path_factory.mktemp("interop") / "alos.log"
    svc = _service(
        kafka_bootstrap, tiny_cpu_artifact, log, {"STREAMER_PRODUCER_COMPRESSION": "lz4"}
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def eos(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The module's exactly-once service, writing zstd results and dead letters."""
    log = tmp_path_factory.mktemp("interop") / "eos.log"
    env = {"STREAMER_DELIVERY": "exactly-once", "STREAMER_PRODUCER_COMPRESSION": "zstd"}
    svc = _service(kafka_bootstrap, tiny_cpu_artifact, log, env)
    yield svc
    svc.stop()


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]


def _event(eid: str, i: int) -> bytes:
    return query_event(eid, QUERIES[i % len(QUERIES)] + f" {i}")


def _by_id(records: list[Seen]) -> dict[str, list[Seen]]:
    """Result records grouped by the event id in their value."""
    out: dict[str, list[Seen]] = {}
    for r in records:
        out.setdefault(event_id_of(r.value), []).append(r)
    out.pop("", None)
    return out


def _assert_results(svc: ServiceProcess, results: list[Seen], ids: list[str]) -> None:
    """Every id answered, keyed by its event id and carrying the model headers."""
    by_id = _by_id(results)
    missing = set(ids) - by_id.keys()
    assert not missing, f"{len(missing)} of {len(ids)} unanswered\n{svc.log_tail()}"
    for eid in ids:
        for r in by_id[eid]:
            assert r.key == eid.encode(), "a result is keyed by its event id"
            assert r.headers.get("model") and r.headers.get("model_version")


def _stored_codecs(svc: ServiceProcess, topic: str) -> Counter[str]:
    """Codec of every data batch the service wrote to one of its output topics."""
    ends = end_offsets(svc.bootstrap, topic)
    ranges = {p: (0, end - 1) for p, end in ends.items() if end > 0}
    found = run_in_fresh_loop(lambda: batches(svc.bootstrap, topic, ranges), 60.0)
    return Counter(b.codec for b in found if not b.control)


def _dead_letters(svc: ServiceProcess, keys: set[bytes]) -> dict[bytes, dict]:
    """The dead letters of records with these keys, read by librdkafka (waits for them)."""
    letters: dict[bytes, dict] = {}
    wanted = {k.decode() for k in keys}
    for r in rdkafka_read(svc.bootstrap, svc.topics.dlq, wanted, timeout_s=90, event_id=False):
        assert r.value is not None
        letter = orjson.loads(r.value)
        if letter.get("key_b64"):
            letters[base64.b64decode(letter["key_b64"])] = letter
    return letters


# ------------------------------------------------------------------------ every codec in


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_from_librdkafka_is_answered(alos: ServiceProcess, codec: str) -> None:
    """A librdkafka producer's batches in each codec (null keys and headers the service does
    not know among them): every event answered, read back by librdkafka."""
    ids = _ids(f"rd-{codec}", 60)
    records = [
        (None if i % 5 == 0 else eid.encode(), _event(eid, i), UNKNOWN_HEADERS)
        for i, eid in enumerate(ids)
    ]
    placed = rdkafka_produce(alos.bootstrap, alos.topics.queries, records, codec)
    stored = run_in_fresh_loop(
        lambda: batches(alos.bootstrap, alos.topics.queries, offset_ranges(placed)), 60.0
    )
    assert {b.codec for b in stored} == {codec}, "the input really travelled in this codec"
    results = rdkafka_read(alos.bootstrap, alos.topics.intents, ids)
    _assert_results(alos, results, ids)


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_from_the_java_console_producer_is_answered(
    alos: ServiceProcess, codec: str
) -> None:
    """The Java console producer in each codec, with null keys and headers: every event
    answered."""
    ids = _ids(f"java-{codec}", 30)
    lines = [
        java_line(None if i % 5 == 0 else eid, _event(eid, i).decode(),
                  {"source": "java-console", "trace-id": f"t{i}"})
        for i, eid in enumerate(ids)
    ]  # fmt: skip
    before = end_offsets(alos.bootstrap, alos.topics.queries)
    java_produce(alos.bootstrap, alos.topics.queries, lines, codec)
    ranges = written_between(before, end_offsets(alos.bootstrap, alos.topics.queries))
    stored = run_in_fresh_loop(lambda: batches(alos.bootstrap, alos.topics.queries, ranges), 60.0)
    assert sum(b.records for b in stored) == len(ids)
    assert {b.codec for b in stored} == {codec}, "the input really travelled in this codec"
    _assert_results(alos, rdkafka_read(alos.bootstrap, alos.topics.intents, ids), ids)


# ------------------------------------------------------------------- keys, values, batches


def test_tombstones_go_to_the_dead_letter_topic_and_say_so(alos: ServiceProcess) -> None:
    """A record without a value (a compaction tombstone) from either client is no event: it
    is dead-lettered, with a reason that says it was a tombstone, and the events around it are
    answered."""
    ids = _ids("tomb-around", 4)
    rd_tomb, java_tomb = f"rd-tomb-{uuid.uuid4().hex[:6]}", f"java-tomb-{uuid.uuid4().hex[:6]}"
    rdkafka_produce(
        alos.bootstrap, alos.topics.queries,
        [(ids[0].encode(), _event(ids[0], 0), []), (rd_tomb.encode(), None, []),
         (ids[1].encode(), _event(ids[1], 1), [])],
        "zstd", partition=0,
    )  # fmt: skip
    java_produce(
        alos.bootstrap, alos.topics.queries,
        [java_line(ids[2], _event(ids[2], 2).decode(), {"h": "1"}),
         java_line(java_tomb, None, {"h": "2"}),
         java_line(ids[3], _event(ids[3], 3).decode(), {"h": "3"})],
        "gzip",
    )  # fmt: skip
    letters = _dead_letters(alos, {rd_tomb.encode(), java_tomb.encode()})
    for key in (rd_tomb.encode(), java_tomb.encode()):
        letter = letters.get(key)
        assert letter is not None, f"no dead letter for tombstone {key!r}\n{alos.log_tail()}"
        assert letter["error_code"] == "TOMBSTONE"
        assert letter["source_topic"] == alos.topics.queries
        assert letter["payload_b64"] in ("", None) or base64.b64decode(letter["payload_b64"]) == b""
        assert "tombstone" in letter["reason"], f"reason does not say tombstone: {letter['reason']}"
    _assert_results(alos, rdkafka_read(alos.bootstrap, alos.topics.intents, ids), ids)


def test_a_large_batch_is_answered(alos: ServiceProcess) -> None:
    """One stored batch of thousands of records (librdkafka, zstd; more records than the
    service takes in one poll and than backpressure may admit at once): every event answered."""
    ids = _ids("large", 5000)
    records = [(eid.encode(), _event(eid, i), []) for i, eid in enumerate(ids)]
    placed = rdkafka_produce(
        alos.bootstrap, alos.topics.queries, records, "zstd", partition=0,
        config={"linger.ms": 1000, "batch.size": 1_000_000, "batch.num.messages": 10_000},
    )  # fmt: skip
    stored = run_in_fresh_loop(
        lambda: batches(alos.bootstrap, alos.topics.queries, offset_ranges(placed)), 60.0
    )
    biggest = max(b.records for b in stored)
    assert biggest >= 2000, f"no large batch was formed: {[b.records for b in stored]}"
    results = rdkafka_read(alos.bootstrap, alos.topics.intents, ids, timeout_s=300)
    _assert_results(alos, results, ids)


# ------------------------------------------------------------------------ a chosen codec out


def _assert_output_codec(svc: ServiceProcess, codec: str) -> None:
    """Answer one event and dead-letter one record; the Java console consumer (read_committed)
    reads the results and librdkafka the dead letter, and every batch the service wrote to its
    results and dead-letter topics is in `codec`."""
    eid, bad = _ids(f"out-{codec}", 1)[0], f"bad-{uuid.uuid4().hex[:6]}"
    rdkafka_produce(
        svc.bootstrap, svc.topics.queries,
        [(eid.encode(), _event(eid, 0), []), (bad.encode(), b"{not json", [])], "none",
    )  # fmt: skip
    rdkafka_read(svc.bootstrap, svc.topics.intents, [eid], settle_s=0)  # until answered
    _assert_results(svc, java_consume(svc.bootstrap, svc.topics.intents), [eid])
    assert bad.encode() in _dead_letters(svc, {bad.encode()})
    for topic in (svc.topics.intents, svc.topics.dlq):
        codecs = _stored_codecs(svc, topic)
        assert set(codecs) == {codec}, f"{topic}: {dict(codecs)}"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy"])
def test_results_use_the_configured_codec(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path, codec: str
) -> None:
    """STREAMER_PRODUCER_COMPRESSION sets the codec of results and dead letters (lz4 and zstd:
    the module's services, below)."""
    env = {"STREAMER_PRODUCER_COMPRESSION": codec}
    svc = _service(kafka_bootstrap, tiny_cpu_artifact, tmp_path / "svc.log", env)
    try:
        _assert_output_codec(svc, codec)
    finally:
        svc.stop()


def test_the_module_services_write_their_configured_codecs(
    alos: ServiceProcess, eos: ServiceProcess
) -> None:
    """lz4 from the at-least-once producer, zstd from the exactly-once (transactional) ones."""
    _assert_output_codec(alos, "lz4")
    _assert_output_codec(eos, "zstd")


# ------------------------------------------------------------ transactions, read_committed


def test_an_aborted_upstream_transaction_is_never_answered(eos: ServiceProcess) -> None:
    """A transactional librdkafka producer commits, aborts, commits. The exactly-once service
    answers each committed event once and never an aborted one; a Java consumer with
    isolation.level=read_committed reads the results, keyed by event id, with model headers.
    The events committed after the aborted ones are answered too, so the service did read past
    the aborted range (the check cannot pass by the service never getting there)."""
    from confluent_kafka import Producer

    committed_a, aborted, committed_c = _ids("txa", 40), _ids("txb", 40), _ids("txc", 40)
    producer = Producer(
        {
            "bootstrap.servers": eos.bootstrap,
            "transactional.id": f"interop-upstream-{uuid.uuid4().hex[:8]}",
            "compression.type": "snappy",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(60)
    for ids, commit in ((committed_a, True), (aborted, False), (committed_c, True)):
        producer.begin_transaction()
        for i, eid in enumerate(ids):
            key = None if i % 7 == 0 else eid.encode()
            producer.produce(eos.topics.queries, _event(eid, i), key, headers=UNKNOWN_HEADERS)
        producer.flush(60)  # the aborted events are in the log before the abort marker
        if commit:
            producer.commit_transaction(60)
        else:
            producer.abort_transaction(60)
    # The aborted events really are stored (a read_uncommitted reader sees them) ...
    raw = rdkafka_read(eos.bootstrap, eos.topics.queries, aborted, read_committed=False)
    assert set(aborted) <= _by_id(raw).keys()
    assert not set(aborted) & _by_id(rdkafka_read(eos.bootstrap, eos.topics.queries)).keys()
    answered = committed_a + committed_c
    # ... every committed one is answered (waited for by librdkafka, read_committed) ...
    rdkafka_read(eos.bootstrap, eos.topics.intents, answered, settle_s=0)
    # ... and the Java consumer, read_committed, sees each exactly once and no aborted one.
    results = java_consume(eos.bootstrap, eos.topics.intents)
    _assert_results(eos, results, answered)
    counts = Counter(event_id_of(r.value) for r in results)
    assert all(counts[eid] == 1 for eid in answered), "exactly once"
    assert not set(aborted) & counts.keys(), "an aborted event was answered"
    # Not even in the service's own aborted transactions, nor dead-lettered.
    everything = rdkafka_read(eos.bootstrap, eos.topics.intents, read_committed=False, settle_s=2)
    assert not set(aborted) & _by_id(everything).keys()
    letters = rdkafka_read(eos.bootstrap, eos.topics.dlq, read_committed=False, settle_s=1)
    lettered = {event_id_of(r.value) for r in letters} | {(r.key or b"").decode() for r in letters}
    assert not set(aborted) & lettered, "an aborted event was dead-lettered"


def test_java_producer_to_exactly_once_service_to_java_consumer(eos: ServiceProcess) -> None:
    """Both ends Java: console producer (lz4) in, exactly-once service, console consumer with
    read_committed out; every event exactly once."""
    ids = _ids("java-eos", 30)
    lines = [
        java_line(eid, _event(eid, i).decode(), {"source": "java"}) for i, eid in enumerate(ids)
    ]
    java_produce(eos.bootstrap, eos.topics.queries, lines, "lz4")
    rdkafka_read(eos.bootstrap, eos.topics.intents, ids, settle_s=0)
    results = java_consume(eos.bootstrap, eos.topics.intents)
    _assert_results(eos, results, ids)
    counts = Counter(event_id_of(r.value) for r in results)
    assert all(counts[eid] == 1 for eid in ids)
