"""What ``memsim calibrate`` runs: the host settings and the scenarios, from one YAML file.

Models
    A calibration scenario is one real KVM guest of ``mem_mib`` MiB confined to a memory
    cgroup (v1 ``memory.limit_in_bytes``, optionally ``memory.memsw.limit_in_bytes`` on memory
    plus swap) with a swapfile behind it. The guest first writes every data page once in order
    (the fill phase; the limit applies from the start), then replays the scenario's stream (the
    run phase). Each scenario is either used to fit the cost profile (``use: fit``) or held out
    to check it (``use: check``); the report says which.

Why these knobs
    They are the ones the kernel's answer depends on and memsim models: the limit (memcg limit
    reclaim), memory plus swap (when the memcg must OOM-kill), swappiness (the anon/file scan
    balance) and ``vm.page-cluster`` (swap readahead). Everything else on the host is left as
    it is found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from sim.calibrate.streams import StreamSpec, StreamWorkload, data_pages
from sim.config import format_validation_error, read_yaml
from sim.errors import ConfigError
from sim.schema import Strict

MAX_GUEST_MIB = 4096


class CalScenario(Strict):
    """One guest, one limit, one stream."""

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Scenario name."
    )
    use: Literal["fit", "check"] = Field(
        "check", description="fit: its measurements fit the cost profile; check: held out."
    )
    mem_mib: int = Field(64, ge=4, le=MAX_GUEST_MIB, description="Guest RAM (MiB).")
    limit_mib: int = Field(
        ge=1, le=1 << 20, description="memory.limit_in_bytes of the guest's memory cgroup (MiB)."
    )
    memsw_limit_mib: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description="memory.memsw.limit_in_bytes, memory plus swap (MiB); unset: unlimited.",
    )
    swappiness: int = Field(60, ge=0, le=200, description="memory.swappiness of the cgroup.")
    flush_stats: bool = Field(
        True,
        description="Keep the memcg statistics flushed during the real runs (stats_flush_ms) "
        "and in memsim; false: leave them to the kernel's lazy flushing, which memsim then "
        "models too (host.memcg_stats: lazy).",
    )
    page_cluster: int = Field(0, ge=0, le=10, description="vm.page-cluster during the run.")
    workload: StreamWorkload = Field(description="The run phase's stream (memsim workload).")
    accesses: int = Field(gt=0, le=1 << 31, description="Accesses in the run phase.")
    write_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a write.")
    seed: int = Field(0, ge=0, description="Seed of the stream.")

    @model_validator(mode="after")
    def _limits(self) -> CalScenario:
        if self.memsw_limit_mib is not None and self.memsw_limit_mib < self.limit_mib:
            raise ValueError(
                f"memsw_limit_mib ({self.memsw_limit_mib}) must be at least limit_mib "
                f"({self.limit_mib}): the kernel refuses a memory+swap limit below the memory one"
            )
        return self

    @property
    def pages(self) -> int:
        """Data pages of the guest (the stream spans all of them)."""
        return data_pages(self.mem_mib)

    def stream(self) -> StreamSpec:
        """The run phase's stream."""
        return StreamSpec(
            workload=self.workload,
            accesses=self.accesses,
            pages=self.pages,
            write_ratio=self.write_ratio,
            seed=self.seed,
        )


class CalibrationConfig(Strict):
    """A calibration: where its swap comes from, how often each scenario runs, the scenarios."""

    name: str = Field("calibrate", min_length=1, max_length=64, description="Run name.")
    repetitions: int = Field(
        3, ge=1, le=50, description="Real runs per scenario (their median is compared)."
    )
    swapfile_mib: int = Field(
        256, ge=16, le=1 << 20, description="Size of the swapfile made for the runs (MiB)."
    )
    timeout_s: float = Field(600.0, gt=0, description="A real run taking longer is killed.")
    stats_flush_ms: float | None = Field(
        2.0,
        gt=0,
        le=60_000,
        description="Read the cgroup's memory.stat this often during real runs, which flushes "
        "the kernel's lazily aggregated memcg statistics; classic reclaim decides whether to "
        "deactivate from them (inactive_is_low), and left stale for up to 2 s they make limit "
        "reclaim find nothing and OOM-kill a KVM guest. null: never (the kernel as it is).",
    )
    policies: list[Literal["two_list", "lru", "clock", "fifo", "mglru"]] = Field(
        default_factory=lambda: ["two_list", "lru", "clock", "fifo"],
        min_length=1,
        description="memsim policies predicted; the first is the one held to the kernel.",
    )
    scenarios: list[CalScenario] = Field(min_length=1, description="The scenarios.")

    @model_validator(mode="after")
    def _checks(self) -> CalibrationConfig:
        names = [s.name for s in self.scenarios]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"scenario names must be unique; repeated: {sorted(dup)}")
        if not any(s.use == "fit" for s in self.scenarios):
            raise ValueError("at least one scenario needs use: fit (the cost profile's data)")
        for s in self.scenarios:
            try:
                s.stream()
            except ValidationError as exc:
                why = exc.errors()[0].get("msg", str(exc)).removeprefix("Value error, ")
                raise ValueError(f"scenario {s.name}: {why}") from None
        return self


def load(path: Path) -> CalibrationConfig:
    """Read and validate a calibration file; every problem is a one-line ConfigError."""
    raw = read_yaml(path)
    try:
        return CalibrationConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, raw, str(path), CalibrationConfig)) from None
