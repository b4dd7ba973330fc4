"""`streamer replay` against the real broker: exact time ranges (empty partitions, transaction
markers), dry-run counts, SIGKILL and resume, isolation from the live group, two processes
splitting one replay, and bad requests that stop before anything is consumed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from streamer.kafka.topics import ensure_topics
from streamer.replay.checkpoint import KafkaCheckpoint
from streamer.replay.plan import TP, PartitionRange
from tests.integration.pipeline_harness import QUERIES, REPO, Topics, collect, create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Record timestamps of the tests (CreateTime): two hours ago, well inside the test broker's 24 h
# retention. Older ones are deleted by the broker's next retention check (every 60 s), which
# once removed the tail of a partition under a running replay; that is now a tested case
# (test_a_range_deleted_under_the_replay_is_reported_not_skipped), not an accident.
BASE_MS = (int(time.time() * 1000) // 60_000 - 120) * 60_000


def _event(event_id: str, i: int) -> bytes:
    return orjson.dumps({"event_id": event_id, "query": QUERIES[i % len(QUERIES)]})


def _env(bootstrap: str, topics: Topics) -> dict[str, str]:
    env = dict(os.environ)
    env.update(topics.env())
    env.update(
        {
            "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMER_VARIANT": "fp32",  # the same on every CPU
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
        }
    )
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def _argv(artifact: Path, replay_id: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "streamer", "replay", "--replay-id", replay_id,
        "--routes", "intent", "--artifact", str(artifact), "--json",
        "--output-topic-suffix", ".replay", *extra,
    ]  # fmt: skip


def _replay(
    bootstrap: str,
    topics: Topics,
    artifact: Path,
    replay_id: str,
    *extra: str,
    timeout: float = 180,
) -> tuple[int, list[dict], str]:
    done = subprocess.run(
        _argv(artifact, replay_id, *extra), env=_env(bootstrap, topics), cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    docs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, docs, done.stderr


async def _topics_with_outputs(bootstrap: str, partitions: int) -> Topics:
    topics = await create_topics(bootstrap, partitions=partitions)
    await ensure_topics(
        bootstrap,
        {f"{t}.replay": partitions for t in (topics.intents, topics.duplicates, topics.dlq)},
    )
    return topics


async def _send(bootstrap: str, topic: str, records: list[tuple[int, str, int]]) -> None:
    """(partition, event id, timestamp ms) records, acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, _event(eid, i), key=eid.encode(), partition=p, timestamp_ms=ts
            )
            for i, (p, eid, ts) in enumerate(records)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _transaction(bootstrap: str, topic: str, partition: int, eid: str, commit: bool) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"t-{uuid.uuid4().hex[:8]}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(
            topic, _event(eid, 0), key=eid.encode(), partition=partition, timestamp_ms=BASE_MS + 500
        )
        await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()


async def test_a_time_range_answers_exactly_its_records(
    kafka_bootstrap: str, tiny_cpu_artifact: Path
) -> None:
    """Partition 0: records before, in and after the range; partition 1: empty; partition 2:
    in range, then an aborted and a committed transaction, so it ends in a marker."""
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=3)
    now = int(time.time() * 1000)
    # A transaction marker carries the broker's append time, so --to must lie after it for
    # partition 2's range to reach its end; partition 0's last records lie after --to (the
    # broker accepts timestamps up to an hour ahead).
    lo, hi = BASE_MS + 500, now + 10 * 60_000
    records = [(0, f"p0-{i}", BASE_MS + i * 100) for i in range(20)]  # p0-5 .. p0-19 in range
    records += [(0, f"p0-{i}", now + 20 * 60_000 + i) for i in range(20, 30)]  # after --to
    records += [(2, f"p2-{i}", BASE_MS + 1000 + i) for i in range(10)]
    await _send(kafka_bootstrap, topics.queries, records)
    await _transaction(kafka_bootstrap, topics.queries, 2, "aborted", commit=False)
    await _transaction(kafka_bootstrap, topics.queries, 2, "committed", commit=True)
    expected = {eid for p, eid, ts in records if lo <= ts < hi} | {"committed"}
    # partition 2's stop is its end offset (nothing at or after --to), past both markers
    args = ("--from", str(lo), "--to", str(hi))

    code, docs, err = _replay(
        kafka_bootstrap, topics, tiny_cpu_artifact, "exact", *args, "--dry-run"
    )
    assert code == 0, err
    plan = {row["partition"]: row for row in docs[0]["plan"]}
    assert plan[f"{topics.queries}:1"]["offsets"] == 0
    assert plan[f"{topics.queries}:0"]["offsets"] == 15

    t0 = time.monotonic()
    code, docs, err = _replay(kafka_bootstrap, topics, tiny_cpu_artifact, "exact", *args)
    print(f"replay of {len(expected)} records ended by itself in {time.monotonic() - t0:.1f} s")
    assert code == 0, err
    summary = docs[-1]["summary"]
    seen = await collect(kafka_bootstrap, topics.intents + ".replay", expected, 30)
    assert set(seen) == expected, f"extra {set(seen) - expected}, missing {expected - set(seen)}"
    assert max(seen.values()) == 1
    assert summary["records_read"] == len(expected) == summary["results"]
    # dry-run counted offsets: partition 0's count is exactly its records
    assert plan[f"{topics.queries}:0"]["offsets"] == sum(1 for e in expected if e.startswith("p0"))


async def _headers(bootstrap: str, topic: str) -> dict[str, bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000, max_records=1)
        msg = next(m for ms in batch.values() for m in ms)
        return dict(msg.headers)
    finally:
        await consumer.stop()


async def test_sigkill_then_resume_covers_the_range_and_never_moves_the_live_group(
    kafka_bootstrap: str, tiny_cpu_artifact: Path
) -> None:
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=2)
    n = 600
    records = [(i % 2, f"k{i}", BASE_MS + i) for i in range(n)]
    await _send(kafka_bootstrap, topics.queries, records)
    # The live service's group has committed offsets of its own: a replay must not move them.
    live = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id="live-group")
    await live.start()
    tps = [TopicPartition(topics.queries, p) for p in (0, 1)]
    live.assign(tps)
    await live.commit({tps[0]: 17, tps[1]: 42})
    await live.stop()

    argv = _argv(tiny_cpu_artifact, "resume", "--rate", "150", "--max-in-flight", "32")
    proc = subprocess.Popen(
        argv, env=_env(kafka_bootstrap, topics), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        partial = await collect(kafka_bootstrap, topics.intents + ".replay", {"k0"}, 120, 1.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert partial, err[-3000:]
    first_pass = sum(partial.values())
    assert first_pass < n, "the replay finished before it could be killed; slow it down"

    code, docs, err = _replay(
        kafka_bootstrap, topics, tiny_cpu_artifact, "resume", "--max-in-flight", "32"
    )
    assert code == 0, err
    summary = docs[-1]["summary"]
    assert summary["resumed"] and docs[0]["resumed"]
    ids = {eid for _, eid, _ in records}
    seen = await collect(kafka_bootstrap, topics.intents + ".replay", ids, 60)
    duplicates = sum(seen.values()) - len(seen)
    print(
        f"killed after {first_pass} results; resumed run read {summary['records_read']}; "
        f"{duplicates} answered twice (bound {summary['redo_bound']})"
    )
    assert set(seen) == ids
    assert duplicates <= summary["redo_bound"]
    headers = await _headers(kafka_bootstrap, topics.intents + ".replay")
    assert headers["replay-id"] == b"resume" and int(headers["source-offset"]) >= 0

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets("live-group")
        replay = await admin.list_consumer_group_offsets("streamer-replay-resume")
    finally:
        await admin.close()
    assert {tp.partition: o.offset for tp, o in offsets.items()} == {0: 17, 1: 42}
    assert {tp.partition: o.offset for tp, o in replay.items()} == {0: n // 2, 1: n // 2}


async def test_two_processes_of_one_replay_split_its_partitions(
    kafka_bootstrap: str, tiny_cpu_artifact: Path
) -> None:
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=4)
    n = 600
    records = [(i % 4, f"s{i}", BASE_MS + i) for i in range(n)]
    await _send(kafka_bootstrap, topics.queries, records)
    # 30/s per process: alone, one process would need 20 s, time for the other to join even
    # on a loaded machine (both must take a share).
    argv = _argv(tiny_cpu_artifact, "split", "--rate", "30", "--max-in-flight", "16")
    procs = [
        subprocess.Popen(
            argv,
            env=_env(kafka_bootstrap, topics),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.splitlines()[-1])["summary"])
    finally:
        for p in procs:  # a failed or timed-out test leaves no replay running
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    read = [o["records_read"] for o in outs]
    seen: Counter[str] = await collect(
        kafka_bootstrap, topics.intents + ".replay", {e for _, e, _ in records}, 60
    )
    duplicates = sum(seen.values()) - len(seen)
    print(f"records read per process {read}; {duplicates} answered twice")
    assert len(seen) == n
    assert all(r > 0 for r in read), "both processes must have taken a share"
    assert duplicates <= max(o["redo_bound"] for o in outs)


async def test_a_range_deleted_under_the_replay_is_reported_not_skipped(
    kafka_bootstrap: str, tiny_cpu_artifact: Path
) -> None:
    """A replay planned (and checkpointed) before the broker deleted part of its range:
    partition 0 loses offsets 0..39 of 0..99, partition 1 all of 0..19. The replay answers what
    is left, names what is gone (summary, exit 4) and checkpoints past it, instead of the
    consumer's silent reset to the log's new start ending in a clean exit."""
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=2)
    records = [(0, f"d{i}", BASE_MS + i) for i in range(100)]
    records += [(1, f"e{i}", BASE_MS + i) for i in range(20)]
    await _send(kafka_bootstrap, topics.queries, records)
    plan = {
        TP(topics.queries, 0): PartitionRange(0, 100),
        TP(topics.queries, 1): PartitionRange(0, 20),
    }
    # What a first process of replay "gone" did before it was killed: the plan, checkpointed.
    assert await KafkaCheckpoint("gone", {"bootstrap_servers": kafka_bootstrap}).write_plan(plan)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records(
            {
                TopicPartition(topics.queries, 0): RecordsToDelete(before_offset=40),
                TopicPartition(topics.queries, 1): RecordsToDelete(before_offset=20),
            }
        )
        code, docs, err = _replay(kafka_bootstrap, topics, tiny_cpu_artifact, "gone")
        group = await admin.list_consumer_group_offsets("streamer-replay-gone")
    finally:
        await admin.close()
    assert code == 4, err[-3000:]
    summary = docs[-1]["summary"]
    assert summary["offsets_deleted"] == 60
    assert summary["deleted"] == {
        f"{topics.queries}:0": [[0, 40]],
        f"{topics.queries}:1": [[0, 20]],
    }
    assert summary["records_read"] == 60 and summary["results"] == 60
    assert "replay_records_deleted" in err
    left = {eid for p, eid, _ in records if p == 0 and int(eid[1:]) >= 40}
    seen = await collect(kafka_bootstrap, topics.intents + ".replay", left, 60)
    assert set(seen) == left
    # checkpointed past the deleted offsets: running it again reads nothing and reports nothing
    assert {tp.partition: o.offset for tp, o in group.items()} == {0: 100, 1: 20}


async def test_a_partition_subset_with_the_group_or_a_checkpoint_file(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    """`--partitions`: in group mode the group is given every partition and finishes the ones
    outside the plan at once; with `--checkpoint FILE` only the planned ones are assigned."""
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=3)
    records = [(i % 3, f"q{i}", BASE_MS + i) for i in range(30)]
    await _send(kafka_bootstrap, topics.queries, records)
    code, docs, err = _replay(
        kafka_bootstrap, topics, tiny_cpu_artifact, "subset", "--partitions", "0", timeout=120
    )
    assert code == 0, err[-3000:]
    assert docs[-1]["summary"]["records_read"] == 10
    assert docs[-1]["summary"]["nice"] == 19  # a backfill yields the CPU by default
    checkpoint = tmp_path / "replay.json"
    code, docs, err = _replay(
        kafka_bootstrap, topics, tiny_cpu_artifact, "subset-file", "--partitions", "1",
        "--checkpoint", str(checkpoint), timeout=120,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert docs[-1]["summary"]["records_read"] == 10
    stored = json.loads(checkpoint.read_text())["partitions"]
    assert stored == {f"{topics.queries}:1": {"start": 0, "stop": 10, "committed": 10}}
    wanted = {eid for p, eid, _ in records if p in (0, 1)}
    seen = await collect(kafka_bootstrap, topics.intents + ".replay", wanted, 60)
    assert set(seen) == wanted


async def test_bad_requests_stop_before_anything_is_consumed(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    topics = await _topics_with_outputs(kafka_bootstrap, partitions=1)
    await _send(kafka_bootstrap, topics.queries, [(0, "b0", BASE_MS)])
    missing = Topics(
        "no-such-topic", *(getattr(topics, f) for f in ("pairs", "intents", "duplicates", "dlq"))
    )
    cases = [
        (missing, ("--dry-run",), "unknown topic"),
        (topics, ("--from", str(BASE_MS + 10), "--to", str(BASE_MS)), "is after --to"),
        (topics, ("--from-offsets", f"{topics.queries}:0=5"), "out of range"),
        (topics, ("--from-offsets", f"{topics.queries}:9=0"), "no such partition"),
        (topics, ("--from", "last tuesday"), "neither ISO-8601"),
    ]
    for case_topics, args, message in cases:
        code, _, err = _replay(kafka_bootstrap, case_topics, tiny_cpu_artifact, "bad", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    broken = tmp_path / tiny_cpu_artifact.name
    shutil.copytree(tiny_cpu_artifact, broken)
    (broken / "labels.json").write_text('{"intent": ["a", "b", "c", "d"]}\n')
    code, _, err = _replay(kafka_bootstrap, topics, broken, "bad")
    assert code == 3 and "does not match its manifest" in err and "Traceback" not in err, err
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        groups = {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    assert "streamer-replay-bad" not in groups, "a refused replay must write nothing"
