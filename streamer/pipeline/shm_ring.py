"""Shared-memory slots between the service process and one worker process.

Why: a batch crosses the process boundary as raw int32/float32 bytes in a segment both
processes map, so the hot path never pickles and never builds per-record Python objects.
Only one byte per batch travels through a pipe, to wake the other side.

One segment per worker, created (and only ever unlinked) by the service process. The
segment outlives worker restarts: a replacement worker attaches to the same name.
Name: ``streamer-<creator pid>-<random hex>-w<worker index>`` so leaks are easy to find
(``ls /dev/shm/streamer-*``).

Memory layout (little-endian, every region 64-byte aligned)::

    offset 0   segment header, 64 bytes
               u64 magic "STRMRNG1" | u32 version | u32 n_slots
               u32 max_batch | u32 max_seq_len | u32 max_outputs | u32 reserved
               i64 heartbeat_ns (worker: time.monotonic_ns() at each pickup / finish)
               i64 worker_pid  (worker: written once attached)
    offset 64  slot 0, slot 1, ... slot n_slots-1, each `RingGeometry.slot_bytes` long:
               slot header, 64 bytes
                 u32 state | u32 task | u32 batch (B) | u32 seq_len (L)
                 u32 n_outputs (K, written by the worker) | u32 error_len | u64 batch_id
                 u64 run_start_ns | u64 run_end_ns (worker: time.monotonic_ns() around the run)
               input_ids       int32 [max_batch * max_seq_len]   (B, L) row-major prefix
               attention_mask  int32 [max_batch * max_seq_len]
               token_type_ids  int32 [max_batch * max_seq_len]
               scores          float32 [max_batch * max_outputs] (B, K) row-major prefix
               error           utf-8 bytes [ERROR_BYTES]  (runner exception text)

All three input arrays travel whole (not lengths + type ids): the runner contract takes
arbitrary masks, and at L <= 512 the extra bytes cost microseconds, not milliseconds.

Ownership protocol (the `state` word says who may touch the slot's payload):

    FREE      -> parent owns. Parent writes inputs + header, then state=SUBMITTED,
    SUBMITTED    then writes the slot index (one byte) to the worker's wake-up pipe.
              -> worker owns. Worker sets RUNNING (so a crash can be blamed on the
    RUNNING      batch it was executing), runs the model, writes scores + K
              -> then state=DONE (or error text + state=FAILED), then writes the slot
    DONE/FAILED  index to the completion pipe. Parent owns again: copies the scores
              -> out and sets FREE.

The pipe syscalls order the payload writes before the other side's reads (write/read
on a pipe is a release/acquire pair through the kernel), so no atomics are needed;
`state` is the ownership record, checked on every hand-over and read when a worker has
died (a dead process has no stores in flight). Pipe writes of one byte are atomic.

Python 3.11's resource_tracker registers every attach and unlinks at the attaching
process's tracker shutdown (bpo-39959). Workers therefore attach without registering
(`WorkerRing.attach`), which leaves the creator's registration intact: if the whole
process tree is SIGKILLed, the tracker still unlinks the segment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

MAGIC = int.from_bytes(b"STRMRNG1", "little")
VERSION = 2  # 2: the slot header carries the run's start and end
ALIGN = 64
HEADER_BYTES = 64
SLOT_HEADER_BYTES = 64
ERROR_BYTES = 1024
NAME_PREFIX = "streamer-"
MAX_SLOTS = 255  # a slot index travels as one byte

# The clock heartbeats and dispatch times are stamped with: CLOCK_MONOTONIC is
# system-wide on Linux, so a worker's stamp compares with the parent's.
time_ns = time.monotonic_ns


class SlotState(IntEnum):
    """Who owns a slot's payload right now (see the module docstring)."""

    FREE = 0
    SUBMITTED = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class RingGeometry:
    """Static sizes of a worker segment; both processes derive every offset from it."""

    n_slots: int
    max_batch: int
    max_seq_len: int
    max_outputs: int

    def __post_init__(self) -> None:
        if not 1 <= self.n_slots <= MAX_SLOTS:
            raise ValueError(f"n_slots must be in 1..{MAX_SLOTS}, got {self.n_slots}")
        for field in ("max_batch", "max_seq_len", "max_outputs"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @property
    def token_bytes(self) -> int:
        """Bytes of one int32 (max_batch, max_seq_len) input region, aligned."""
        return _align(4 * self.max_batch * self.max_seq_len)

    @property
    def score_bytes(self) -> int:
        """Bytes of the float32 (max_batch, max_outputs) score region, aligned."""
        return _align(4 * self.max_batch * self.max_outputs)

    @property
    def slot_bytes(self) -> int:
        """Bytes of one slot: header, three input regions, scores, error text."""
        return SLOT_HEADER_BYTES + 3 * self.token_bytes + self.score_bytes + _align(ERROR_BYTES)

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole segment."""
        return HEADER_BYTES + self.n_slots * self.slot_bytes


@dataclass(frozen=True)
class RingHandle:
    """Picklable reference to a segment: what a worker needs to attach."""

    name: str
    geometry: RingGeometry


class Slot:
    """Numpy views onto one slot of a mapped segment (no copies, no pickling)."""

    def __init__(self, buf: memoryview, offset: int, geometry: RingGeometry) -> None:
        g = geometry
        self.geometry = g
        self._h32 = np.ndarray((SLOT_HEADER_BYTES // 4,), np.uint32, buf, offset)
        self._h64 = np.ndarray((SLOT_HEADER_BYTES // 8,), np.uint64, buf, offset)
        n_tok = g.max_batch * g.max_seq_len
        off = offset + SLOT_HEADER_BYTES
        self.input_ids = np.ndarray((n_tok,), np.int32, buf, off)
        off += g.token_bytes
        self.attention_mask = np.ndarray((n_tok,), np.int32, buf, off)
        off += g.token_bytes
        self.token_type_ids = np.ndarray((n_tok,), np.int32, buf, off)
        off += g.token_bytes
        self.scores = np.ndarray((g.max_batch * g.max_outputs,), np.float32, buf, off)
        off += g.score_bytes
        self.error = np.ndarray((ERROR_BYTES,), np.uint8, buf, off)

    # header words: [0]=state [1]=task [2]=batch [3]=seq_len [4]=n_outputs [5]=error_len
    # u64 [3] = batch_id (bytes 24..32), [4] = run_start_ns, [5] = run_end_ns (bytes 32..48)
    @property
    def state(self) -> SlotState:
        """Current owner/state word."""
        return SlotState(int(self._h32[0]))

    def set_state(self, state: SlotState) -> None:
        """Hand the slot over; always the last write of a hand-over."""
        self._h32[0] = int(state)

    @property
    def batch_id(self) -> int:
        """Parent-assigned id of the batch occupying the slot."""
        return int(self._h64[3])

    @property
    def task(self) -> int:
        """Task (head) number of the batch in the slot."""
        return int(self._h32[1])

    @property
    def shape(self) -> tuple[int, int]:
        """(B, L) of the batch in the slot."""
        return int(self._h32[2]), int(self._h32[3])

    def write_request(
        self,
        batch_id: int,
        task: int,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ) -> None:
        """Parent side: copy a (B, L) batch in and hand the slot to the worker."""
        b, length = input_ids.shape
        g = self.geometry
        if b > g.max_batch or length > g.max_seq_len:
            raise ValueError(
                f"batch {b}x{length} exceeds slot capacity {g.max_batch}x{g.max_seq_len}"
            )
        n = b * length
        np.copyto(self.input_ids[:n].reshape(b, length), input_ids, casting="same_kind")
        np.copyto(self.attention_mask[:n].reshape(b, length), attention_mask, casting="same_kind")
        np.copyto(self.token_type_ids[:n].reshape(b, length), token_type_ids, casting="same_kind")
        self._h32[1] = task
        self._h32[2] = b
        self._h32[3] = length
        self._h32[4] = 0
        self._h32[5] = 0
        self._h64[3] = batch_id
        self._h64[4] = 0
        self._h64[5] = 0
        self.set_state(SlotState.SUBMITTED)

    def request_views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Worker side: zero-copy (B, L) views of the three input arrays."""
        b, length = self.shape
        n = b * length
        return (
            self.input_ids[:n].reshape(b, length),
            self.attention_mask[:n].reshape(b, length),
            self.token_type_ids[:n].reshape(b, length),
        )

    def stamp_run(self, start_ns: int, end_ns: int) -> None:
        """Worker side: when the model run started and ended (time.monotonic_ns())."""
        self._h64[4] = start_ns
        self._h64[5] = end_ns

    def run_times(self) -> tuple[float, float]:
        """Parent side: the run's (start, end) in time.monotonic() seconds."""
        return int(self._h64[4]) / 1e9, int(self._h64[5]) / 1e9

    def write_result(self, scores: np.ndarray) -> None:
        """Worker side: store (B, K) scores and hand the slot back as DONE."""
        b, _ = self.shape
        if scores.ndim != 2 or scores.shape[0] != b:
            raise ValueError(f"runner returned shape {scores.shape}, expected ({b}, K)")
        k = scores.shape[1]
        if k > self.geometry.max_outputs:
            raise ValueError(f"runner returned {k} outputs, slot holds {self.geometry.max_outputs}")
        np.copyto(self.scores[: b * k].reshape(b, k), scores, casting="same_kind")
        self._h32[4] = k
        self.set_state(SlotState.DONE)

    def write_error(self, text: str) -> None:
        """Worker side: store an error text (truncated) and hand the slot back as FAILED."""
        raw = text.encode("utf-8", "replace")[:ERROR_BYTES]
        self.error[: len(raw)] = np.frombuffer(raw, np.uint8)
        self._h32[5] = len(raw)
        self.set_state(SlotState.FAILED)

    def read_result(self) -> np.ndarray:
        """Parent side: copy the (B, K) scores out so the slot can be reused at once."""
        b, _ = self.shape
        k = int(self._h32[4])
        return self.scores[: b * k].reshape(b, k).copy()

    def read_error(self) -> str:
        """Parent side: the runner's error text."""
        n = int(self._h32[5])
        return bytes(self.error[:n]).decode("utf-8", "replace")


def _attach_untracked(segment: str) -> shared_memory.SharedMemory:
    # Registering from the worker would let its exit unlink the parent's segment, and
    # unregistering afterwards would drop the parent's own registration (the tracker
    # keeps a set, not a count); skipping the registration avoids both.
    original = resource_tracker.register

    def register(name: Any, rtype: str) -> None:
        if rtype != "shared_memory":
            original(name, rtype)

    resource_tracker.register = register
    try:
        return shared_memory.SharedMemory(name=segment, create=False)
    finally:
        resource_tracker.register = original


class WorkerRing:
    """One worker's segment: header (heartbeat, pid) plus `n_slots` slots."""

    def __init__(self, shm: shared_memory.SharedMemory, geometry: RingGeometry, owner: bool):
        self._shm = shm
        self._owner = owner
        self.geometry = geometry
        buf = shm.buf
        assert buf is not None
        self._h32 = np.ndarray((HEADER_BYTES // 4,), np.uint32, buf, 0)
        self._h64 = np.ndarray((HEADER_BYTES // 8,), np.int64, buf, 0)
        self._magic = np.ndarray((1,), np.uint64, buf, 0)
        self.slots = [
            Slot(buf, HEADER_BYTES + i * geometry.slot_bytes, geometry)
            for i in range(geometry.n_slots)
        ]

    @classmethod
    def create(cls, geometry: RingGeometry, tag: str) -> WorkerRing:
        """Create a fresh segment named for this process; the caller must `unlink` it."""
        name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{tag}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=geometry.total_bytes)
        ring = cls(shm, geometry, owner=True)
        ring._magic[0] = MAGIC
        ring._h32[2] = VERSION
        ring._h32[3] = geometry.n_slots
        ring._h32[4] = geometry.max_batch
        ring._h32[5] = geometry.max_seq_len
        ring._h32[6] = geometry.max_outputs
        ring.reset()
        return ring

    @classmethod
    def attach(cls, handle: RingHandle) -> WorkerRing:
        """Map an existing segment (worker side); checks the header against the handle."""
        shm = _attach_untracked(handle.name)
        g = handle.geometry
        assert shm.buf is not None
        # Check before building views: a mismatched geometry could point past the end.
        header = bytes(shm.buf[:HEADER_BYTES])
        found = (
            int.from_bytes(header[:8], "little"),
            *(int.from_bytes(header[i : i + 4], "little") for i in range(8, 28, 4)),
        )
        expected = (MAGIC, VERSION, g.n_slots, g.max_batch, g.max_seq_len, g.max_outputs)
        if found != expected or shm.size < g.total_bytes:
            shm.close()
            raise ValueError(f"segment {handle.name} header {found} != expected {expected}")
        return cls(shm, g, owner=False)

    @property
    def handle(self) -> RingHandle:
        """Picklable handle for a worker process."""
        return RingHandle(self.name, self.geometry)

    @property
    def name(self) -> str:
        """Segment name (without the leading slash)."""
        return self._shm.name.lstrip("/")

    @property
    def heartbeat_ns(self) -> int:
        """Worker's last progress stamp (time.monotonic_ns(), 0 = none yet)."""
        return int(self._h64[4])

    def beat(self) -> None:
        """Worker side: record progress now."""
        self._h64[4] = time_ns()

    @property
    def worker_pid(self) -> int:
        """Pid of the worker last attached (0 = none)."""
        return int(self._h64[5])

    def set_worker_pid(self, pid: int) -> None:
        """Worker side: announce which process serves the segment."""
        self._h64[5] = pid

    def reset(self) -> None:
        """Parent side, no worker attached: every slot FREE, no heartbeat, no pid."""
        for slot in self.slots:
            slot.set_state(SlotState.FREE)
        self._h64[4] = 0
        self._h64[5] = 0

    def close(self) -> None:
        """Unmap (views are dropped first: mmap refuses to close under live exports)."""
        self.slots = []
        del self._h32, self._h64, self._magic
        # BufferError: a view escaped (e.g. a runner kept an input array); the mapping
        # then goes away with the process, which is harmless.
        with contextlib.suppress(BufferError):
            self._shm.close()

    def unlink(self) -> None:
        """Creator side: remove the name; idempotent."""
        if not self._owner:
            raise RuntimeError("only the creating process unlinks a segment")
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
        self._owner = False
