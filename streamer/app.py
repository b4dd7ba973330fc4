"""`streamer run`: the composition root that turns Settings into a running Service.

It reads the compiled artifact's manifest (labels, buckets, threshold, target), builds the
tokenizer, picks the executor and the worker layout for the target, and wires the per-path
handlers and batch policies.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamer import logs
from streamer.config import PathName, Settings, load_settings
from streamer.model.buckets import Buckets
from streamer.model.tasks import Task
from streamer.pipeline.batcher import BatchPolicy, batch_bucket, duplicate_policy, intent_policy
from streamer.pipeline.paths import ModelInfo, make_handlers
from streamer.pipeline.service import Service, StartupError

log = logging.getLogger("streamer.app")


def worker_layout(target: str, settings: Settings) -> tuple[int, int, Any]:
    """(workers, threads per worker, env_per_worker) for a target: one worker per device core."""
    cores = os.cpu_count() or 1
    if target == "cpu":
        # One core stays with the asyncio process (Kafka client, decode, tokenize).
        workers = settings.workers or max(1, cores - 1)
        # Its core is kept free of model threads only when latency matters (intent path).
        # Pairs alone are throughput-first and their event loop is light (60 pairs/s on 2
        # cores): there the workers' threads take every core (same-run A/B, BENCHMARKS.md).
        spare = cores - 1 if PathName.INTENT in settings.paths else cores
        threads = settings.threads_per_worker or max(1, spare // workers)

        def env(i: int) -> dict[str, str]:
            return {"OMP_NUM_THREADS": str(threads)}

        return workers, threads, env
    if target == "cuda":
        import torch

        workers = settings.workers or max(1, torch.cuda.device_count())
        threads = settings.threads_per_worker or 2

        def env_cuda(i: int) -> dict[str, str]:
            return {"CUDA_VISIBLE_DEVICES": str(i), "OMP_NUM_THREADS": str(threads)}

        return workers, threads, env_cuda
    if target in ("neuron", "neuronx"):
        if settings.workers is None:
            raise StartupError("target neuron needs --workers = number of NeuronCores to use")
        workers = settings.workers
        threads = settings.threads_per_worker or 1

        def env_neuron(i: int) -> dict[str, str]:
            # One model copy per NeuronCore, as in the Amazon Search deployment.
            return {"NEURON_RT_VISIBLE_CORES": str(i), "OMP_NUM_THREADS": str(threads)}

        return workers, threads, env_neuron
    raise StartupError(f"unknown artifact target {target!r}")


def build_service(settings: Settings) -> Service:
    """Everything `streamer run` needs, from settings and the artifact on disk."""
    from streamer.model.artifact import read_manifest
    from streamer.model.runner import RunnerManifest
    from streamer.model.tokenize import Encoder
    from streamer.pipeline.executor import InProcessExecutor, MultiprocExecutor, RunnerSpec

    artifact = resolve_artifact(settings.artifact)
    manifest = read_manifest(artifact)
    info = RunnerManifest.from_manifest(manifest, settings.variant or manifest["default_variant"])
    buckets = info.buckets
    model = ModelInfo(
        name=info.name,
        version=str(info.version),
        labels=info.labels,
        duplicate_threshold=info.duplicate_threshold,
    )
    encoder = Encoder.from_artifact(artifact)
    handlers = make_handlers(settings, model, encoder)
    spec = RunnerSpec(
        "streamer.model.runner:load_runner",
        {
            "artifact_dir": str(artifact),
            "force": settings.force_artifact,
            "variant": settings.variant,
        },
    )
    workers, threads, env = worker_layout(info.target, settings)
    spec.kwargs["threads"] = threads
    executor: Any
    if settings.executor == "inprocess":
        executor = InProcessExecutor(spec)
    else:
        executor = MultiprocExecutor(
            spec,
            workers=workers,
            threads_per_worker=threads,
            slots_per_worker=settings.slots_per_worker,
            max_batch=max(b.max_batch for b in buckets.values()),
            max_seq_len=max(b.max_seq_len for b in buckets.values()),
            max_outputs=max(len(model.labels), 1),
            heartbeat_timeout_s=settings.worker_heartbeat_timeout_s,
            env_per_worker=env,
        )
    policies = batch_policies(info.target, settings, buckets)
    settings = settings.model_copy(update=target_rates(info.target, settings))
    return Service(settings, handlers, executor, policies)


def resolve_artifact(artifact: Path | None) -> Path:
    """The compiled artifact to serve: the given one, or the shipped model compiled for cpu.

    A trained artifact (no manifest.json, e.g. `models/<name>`) is compiled for the cpu target
    on first use and cached under artifacts/.
    """
    from streamer.model.artifact import ArtifactError
    from streamer.model.shipped import ensure_compiled, is_compiled

    try:
        if artifact is None:
            return ensure_compiled()
        if is_compiled(artifact):
            return Path(artifact)
        if (Path(artifact) / "config.json").is_file():
            return ensure_compiled(Path(artifact))
    except ArtifactError as exc:
        raise StartupError(str(exc)) from exc
    raise StartupError(
        f"{artifact} is neither a compiled artifact (manifest.json) nor a trained one "
        "(config.json); build one with `python -m compile --target cpu --artifact DIR`"
    )


def target_rates(target: str, settings: Settings) -> dict[str, float]:
    """Expected peak rates per path (Little's-law in-flight sizing) unless set explicitly.

    cpu intents: what a 2-core machine sustains near its knee (BENCHMARKS.md). cpu pairs are
    sized for throughput, not their ~60/s knee: each pause/resume cycle of the consumer idles
    the worker, and a bound of 32 pairs gave 40 pairs/s where 200 gave 61/s at 62.5 offered
    (BENCHMARKS.md). Accelerators: the published 16,000 intents/s and 8,800 pairs/s.
    """
    cpu = target == "cpu"
    return {
        "intent_target_tps": settings.intent_target_tps or (400.0 if cpu else 16_000.0),
        "duplicate_target_tps": settings.duplicate_target_tps or (400.0 if cpu else 8_800.0),
    }


def batch_policies(
    target: str, settings: Settings, buckets: dict[Task, Buckets]
) -> dict[str, BatchPolicy]:
    """Per-path batch policies: the compiled buckets bound them, the target sets the sizes.

    On a 2-core CPU (ONNX int8) a 32x16 intent batch takes ~31 ms, three times the whole
    10 ms budget, while 4x16 takes ~5 ms: CPU defaults are small batches (DESIGN.md section 4).
    """
    cpu = target == "cpu"
    ib, db = buckets[Task.INTENT], buckets[Task.DUPLICATE]
    if cpu:
        # ONNX Runtime runs any batch size: padding rows up to a bucket only pays off on
        # static-shape targets (CUDA graphs, Neuron), so on cpu every row count is a bucket.
        ib = Buckets(tuple(range(1, ib.max_batch + 1)), ib.seq_lens)
        db = Buckets(tuple(range(1, db.max_batch + 1)), db.seq_lens)
    intent_rows = min(settings.intent_max_batch or (4 if cpu else 32), ib.max_batch)
    dup_rows = min(settings.duplicate_max_batch or (8 if cpu else 128), db.max_batch)
    typical_pair_len = min(128, db.max_seq_len)
    return {
        "intent": intent_policy(
            max_batch=intent_rows,
            # A full batch of 16-token queries fits; one long query shrinks its batch instead
            # of making every row pay its length.
            max_padded_tokens=max(
                batch_bucket(ib.batch_sizes, intent_rows) * ib.seq_lens[0], ib.max_seq_len
            ),
            max_linger_s=settings.intent_max_linger_ms / 1000.0,
            seq_buckets=ib.seq_lens,
            batch_buckets=ib.batch_sizes,
        ),
        "duplicate": duplicate_policy(
            max_batch=dup_rows,
            # Long pairs are what costs: a batch of 256-token pairs stays as cheap as a full
            # batch of typical 128-token ones.
            max_padded_tokens=max(
                batch_bucket(db.batch_sizes, dup_rows) * typical_pair_len, db.max_seq_len
            ),
            max_linger_s=settings.duplicate_max_linger_ms / 1000.0,
            seq_buckets=db.seq_lens,
            batch_buckets=db.batch_sizes,
            group_by_length=settings.duplicate_group_by_length,
        ),
    }


async def serve(settings: Settings) -> int:
    """Start the service, run until a signal, drain, and return the exit code."""
    service = build_service(settings)
    await service.start()
    service.install_signal_handlers()
    return await service.run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `streamer run` (each overrides env and TOML)."""
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--bootstrap-servers")
    parser.add_argument(
        "--artifact",
        help="model to serve: a compiled artifact, or a trained one (compiled for cpu on first "
        "use); default: the model shipped in models/",
    )
    parser.add_argument("--paths", help="intent, duplicate or intent,duplicate")
    parser.add_argument("--group-id")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads-per-worker", type=int)
    parser.add_argument("--executor", choices=["multiproc", "inprocess"])
    parser.add_argument("--p99-target-ms", type=float)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log-level")


def run(args: argparse.Namespace) -> int:
    """Run the service (`streamer run`)."""
    flags = {
        k: getattr(args, k)
        for k in (
            "bootstrap_servers", "artifact", "paths", "group_id", "workers",
            "threads_per_worker", "executor", "p99_target_ms", "metrics_port", "log_level",
        )
    }  # fmt: skip
    try:
        settings = load_settings(args.config, **flags)
    except ValidationError as exc:
        # include_input=False: a rejected value may be a secret.
        for err in exc.errors(include_input=False):
            print(
                f"invalid setting {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr
            )
        return 2
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        import uvloop

        return uvloop.run(serve(settings))
    except StartupError as exc:
        log.error("startup failed", extra={"event": "startup_failed", "reason": str(exc)})
        print(f"streamer: {exc}", file=sys.stderr)
        return 3
