"""How much work each section does: the full run (the committed results) and ``--quick``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    # 1. guard overhead
    guard_rounds: int
    guard_jobs: int  # enqueues per round, one fresh pipeline each
    guard_shared_jobs: int  # enqueues per round into one shared pipeline (RQ >= 2.3)
    micro_rounds: int
    micro_calls: int  # setup_dependencies calls per round
    instruction_jobs: int  # enqueues counted by callgrind, per driving and variant
    # 2. start-up
    startup_runs: int  # runs of each of the four commands
    # 3. throughput
    throughput_rounds: int
    throughput_jobs: int
    throughput_queues: int
    slow_jobs: int  # jobs for (a) behind the latency proxy, where each one costs several round trips
    added_rtt_ms: float
    # 4. dependent jobs
    dependent_rounds: int
    dependent_sizes: tuple[int, ...]
    # 5. memory
    memory_jobs: int  # the one big batch
    memory_batches: int  # repeated batches, checked for growth
    memory_batch_jobs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Settings(
    guard_rounds=20,
    guard_jobs=500,
    guard_shared_jobs=1000,
    micro_rounds=6,
    micro_calls=100_000,
    instruction_jobs=200,
    startup_runs=120,  # whole processes vary by ~10% here: fewer rounds leave the 1.03x target unreadable
    throughput_rounds=5,
    throughput_jobs=10_000,
    throughput_queues=10,
    slow_jobs=1000,
    added_rtt_ms=1.0,
    dependent_rounds=2,
    dependent_sizes=(1000, 10_000, 50_000),
    memory_jobs=100_000,
    memory_batches=20,
    memory_batch_jobs=1000,
)

QUICK = Settings(
    guard_rounds=6,
    guard_jobs=100,
    guard_shared_jobs=300,
    micro_rounds=3,
    micro_calls=20_000,
    instruction_jobs=30,
    startup_runs=6,
    throughput_rounds=2,
    throughput_jobs=1000,
    throughput_queues=10,
    slow_jobs=100,
    added_rtt_ms=1.0,
    dependent_rounds=1,
    dependent_sizes=(200, 1000, 2000),
    memory_jobs=5000,
    memory_batches=8,
    memory_batch_jobs=300,
)
