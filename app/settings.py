"""Service settings: one class, read from the environment (prefix IBRNET_), refused early when bad."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The repository's models/ folder; containers and installed copies point IBRNET_MODELS_DIR elsewhere.
REPOSITORY_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def available_cpus() -> int:
    """CPUs this process may use (affinity), not the host's count: ORT would oversubscribe."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


MAX_GC_THRESHOLD = 1_000_000_000
GC_THRESHOLDS_RULE = f"three integers from 1 to {MAX_GC_THRESHOLD:,}, like 50000,20,20"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IBRNET_", extra="ignore")

    models_dir: Path = REPOSITORY_MODELS_DIR
    database_url: str = "sqlite:///./ibrnet.db"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Serve the int8 variant of a model on CPU when it ships one (issue 4: within 2% of fp32).
    prefer_int8_on_cpu: bool = False

    max_batch_items: int = Field(100_000, ge=1)
    max_formula_length: int = Field(256, ge=8, le=10_000)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Connections (`ibrnet serve`, app/api/protocol.py): headers complete within HEADER_TIMEOUT_S
    # and MAX_HEADER_BYTES, a body never paused longer than BODY_TIMEOUT_S, at most
    # MAX_CONNECTIONS open at once, and at most SHUTDOWN_TIMEOUT_S of graceful shutdown.
    header_timeout_s: float = Field(10.0, gt=0.0)
    body_timeout_s: float = Field(30.0, gt=0.0)
    # ... and, past its first MIN_BODY_RATE_GRACE_S, a body arrives at MIN_BODY_RATE bytes/s on
    # average (0: no minimum): a trickle of a byte every few seconds held a connection for minutes.
    min_body_rate: float = Field(1024.0, ge=0.0)
    min_body_rate_grace_s: float = Field(10.0, gt=0.0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_connections: int = Field(4096, ge=1)
    shutdown_timeout_s: int = Field(30, ge=1)

    # Dynamic batching: one ONNX Runtime call takes at most BATCH_MAX_SIZE rows and waits at
    # most BATCH_MAX_WAIT_MS for company after the first request arrives.
    batch_max_size: int = Field(1024, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    intra_op_threads: int = Field(default_factory=available_cpus, ge=1)

    # Predictions kept in process memory in front of the SQL cache (all models together; about
    # 300 bytes each, 30 MB at the default): repeats skip the database and the batcher. 0: off.
    memory_cache_rows: int = Field(100_000, ge=0)
    # Rows the SQL prediction cache keeps (every model's; ~150 bytes each on disk, 1.5 GB at the
    # default): past it the oldest written are deleted. Distinct formulas never run out. 0: no bound.
    cache_max_rows: int = Field(10_000_000, ge=0)

    # Python's cyclic collector while serving: young, middle and old generation thresholds
    # (app/collector.py; Python's own are 700,10,10), written 50000,20,20 in the environment.
    gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = (50_000, 20, 20)

    # Screening jobs: rows per committed chunk.
    screen_chunk_size: int = Field(4096, ge=1)
    # Largest screen one job may hold (enumerated compositions or uploaded formulas).
    screen_max_compositions: int = Field(10_000_000, ge=1)
    # ORT threads of the job runner's own sessions (0: half of INTRA_OP_THREADS, at least 1), so a
    # big job leaves CPU to interactive /predict; and a pause between chunks for the same reason.
    screen_intra_op_threads: int = Field(0, ge=0)
    screen_chunk_pause_ms: float = Field(0.0, ge=0.0, le=10_000.0)
    # Fair scheduling: a job that has run this long gives its turn to a waiting one (and queues
    # again behind it), so a small screen never waits for a huge one to finish. 0: run to the end.
    screen_slice_s: float = Field(10.0, ge=0.0)
    # Stopped jobs (and their rows) are deleted this long after they stop; 0 keeps them forever.
    screen_retention_hours: float = Field(168.0, ge=0.0)
    # Nice value of the runner thread (Linux): under contention the kernel favours request threads.
    screen_nice: int = Field(10, ge=0, le=19)
    # A running job whose runner has not committed for this long (killed) is taken over.
    screen_lease_s: float = Field(30.0, gt=0.0)

    # Stability (e_above_hull): a CSV `formula,formation_energy` (eV/atom, DFT) replacing the
    # shipped Materials Project reference, and how many chemical systems' hulls stay built.
    hull_reference: Path | None = None
    hull_cache_systems: int = Field(4096, ge=1)

    # Access (off when neither is set): API keys, comma-separated, or a file of their sha256 hex
    # digests (one a line, # comments). With keys on, every endpoint but /health, /ready,
    # /metrics, the page and the docs needs one, and each key sees and stops only its own jobs.
    api_keys: str = Field("", repr=False)
    api_keys_file: Path | None = None
    # Per key, with keys on: requests a second (a burst of twice that), screening jobs queued or
    # running at once, and rows those jobs may still have to compute.
    api_rate_per_s: float = Field(50.0, gt=0.0)
    screen_max_jobs_per_key: int = Field(4, ge=1)
    screen_max_rows_per_key: int = Field(5_000_000, ge=1)

    @field_validator("gc_thresholds", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
                raise ValueError(GC_THRESHOLDS_RULE)
            return tuple(int(part) for part in parts)
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _positive_thresholds(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        # A young threshold of 0 would switch the collector off (cycles would leak); Python takes
        # C ints, and past a billion allocations a threshold only means "never".
        if not all(1 <= threshold <= MAX_GC_THRESHOLD for threshold in value):
            raise ValueError(GC_THRESHOLDS_RULE)
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be sqlite:// or postgresql://")
        return value


def settings_problems(error: ValidationError) -> list[str]:
    """One line per refused setting, named as it is set: ``IBRNET_GC_THRESHOLDS: ... (got 'a')``."""
    lines: dict[str, str] = {}  # the first problem of each setting (a tuple's items each have one)
    for problem in error.errors(include_url=False):
        name = f"IBRNET_{str(problem['loc'][0]).upper()}" if problem["loc"] else "settings"
        got = problem.get("input")
        shown = "" if got is None or isinstance(got, dict) else f" (got {str(got)[:80]!r})"
        lines.setdefault(name, f"{name}: {problem['msg'].removeprefix('Value error, ')}{shown}")
    return list(lines.values())


@lru_cache
def get_settings() -> Settings:
    return Settings()
