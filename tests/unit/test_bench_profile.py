"""Folding py-spy's collapsed stacks into pipeline stages (the format py-spy 0.4 writes)."""

from __future__ import annotations

from streamer.bench.profile import fold, stage_of, summary

# As py-spy 0.4 writes them: the process chain first, root first, then the frames.
ROOT = 'process 10:"";<module> (streamer/__main__.py:5);run (uvloop/__init__.py:92)'
WORKER = 'process 10:"";process 11:"python -c from multiprocessing.spawn import spawn_main"'


def test_innermost_named_frame_decides_and_asyncio_is_the_fallback() -> None:
    send = [
        "Runner.run (asyncio/runners.py:118)",
        "AIOKafkaClient.send (aiokafka/client.py:500)",
        "StreamWriter.write (asyncio/streams.py:300)",
    ]
    assert stage_of(send) == "Kafka client (connection, protocol)"
    produce = ["Publisher.send_until_acked (streamer/pipeline/publisher.py:90)",
               "AIOKafkaProducer.send (aiokafka/producer/producer.py:400)"]  # fmt: skip
    assert stage_of(produce) == "Kafka produce"
    parse = ["KafkaIntake.fetch_loop (streamer/pipeline/intake.py:90)",
             "getmany (aiokafka/consumer/consumer.py:1200)",
             "_unpack (aiokafka/record/default_records.py:80)"]  # fmt: skip
    assert stage_of(parse) == "Kafka fetch + record parsing"
    decode = ["KafkaIntake.ingest (streamer/pipeline/intake.py:130)",
              "IntentRoute.decode (streamer/pipeline/routes.py:120)",
              "decode_query (streamer/records/codec.py:200)"]  # fmt: skip
    assert stage_of(decode) == "decode records"
    encode = ["IntentRoute.results (streamer/pipeline/routes.py:130)",
              "encode_intent_result (streamer/records/codec.py:400)"]  # fmt: skip
    assert stage_of(encode) == "encode results"
    assert stage_of(["EmulatedRunner.run (streamer/model/backend_emulated.py:120)"]) == (
        "model / device"
    )
    tok = ["Service._ingest (streamer/pipeline/service.py:380)",
           "encode_queries (streamer/model/tokenize.py:90)"]  # fmt: skip
    assert stage_of(tok) == "tokenize"
    assert stage_of(["run (uvloop/__init__.py:92)", "Runner.run (asyncio/runners.py:118)"]) == (
        "event loop (uvloop/asyncio internals)"
    )
    assert stage_of(["<module> (x.py:1)"]) == "other"


def test_fold_splits_service_and_worker_by_the_innermost_process_frame() -> None:
    lines = [
        f"{ROOT};Service._fetch_loop (streamer/pipeline/service.py:323);"
        "getmany (aiokafka/consumer/consumer.py:1200) 7",
        f"{WORKER};_loop (streamer/pipeline/worker.py:120);"
        "run (onnxruntime/capi/onnxruntime_inference_collection.py:220) 30",
        f"{WORKER};_loop (streamer/pipeline/worker.py:110) 3",
        "not a stack line",
    ]
    per_role = fold(lines)
    assert per_role["service"] == {"Kafka client (connection, protocol)": 7}
    assert per_role["worker"] == {"model / device": 30, "shared-memory hop": 3}
    text = summary(per_role, "t", rate_hz=10, seconds=3.0)
    assert "## worker process: 3.3 busy CPU s sampled over 3 s (110% of one core)" in text
    assert "| model / device | 3.00 | 91% |" in text
    per_event = summary(per_role, "t", rate_hz=10, seconds=3.0, events=1000)
    assert "(110% of one core; 3300 µs per event)" in per_event
    assert "| model / device | 3.00 | 91% | 3000 |" in per_event
