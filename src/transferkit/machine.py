"""What this machine offers an inference engine, read without importing torch: the CPU's
matrix and bf16 instructions (from /proc/cpuinfo on Linux) and whether a CUDA driver is present."""

from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere, or where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def has_amx_bf16() -> bool:
    """Intel AMX tiles with bf16 (Sapphire Rapids and later): oneDNN's bf16 matrix kernels there
    make PyTorch bf16 1.34x as fast as ONNX Runtime fp32 (README, Engines)."""
    return "amx_bf16" in cpu_flags()


def has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_name() -> str:
    """The CPU's model name, for results.json and the benchmarks."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_threads(threads: int = 0) -> int:
    """An inference session's intra-op threads: `threads`, else OMP_NUM_THREADS where set (torchrun
    sets it to share the cores among the processes of a node), else the cores this process may use."""
    return threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or usable_cores()


def default_workers() -> int:
    """DataLoader workers: none on small machines, where they compete with the model for cores
    (measured on 2 cores); a few where cores are plentiful."""
    cores = usable_cores()
    return 0 if cores <= 4 else min(8, cores // 2)


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded: only then is torch imported to ask for a CUDA device."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"))


def describe() -> dict:
    """The CPU facts the engine choice reads, for results.json."""
    return {"cpu": cpu_name(), "bf16": has_bf16(), "amx": has_amx_bf16()}
