"""Which instructions this CPU has that matter for inference: AVX2, AVX-512 VNNI/BF16, AMX.

Read once from ``/proc/cpuinfo`` (Linux; elsewhere every flag is ``False``). Machines of one
kind differ (an AMD EPYC with AVX2 only, an Intel Xeon with AMX), so the daemon logs this at
start, stores it in the run file and ``backend_precision = "auto"`` picks int8 / bf16 from it.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class CpuIsa:
    """The CPU model and the inference-relevant instruction-set extensions it reports."""

    model: str
    cpus: int
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False
    amx_int8: bool = False
    amx_bf16: bool = False

    @property
    def fast_int8(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX): int8 QDQ models beat fp32 here."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    @property
    def fast_bf16(self) -> bool:
        """bf16 matrix hardware (AVX-512 BF16 or AMX-BF16)."""
        return self.avx512_bf16 or self.amx_bf16

    def summary(self) -> str:
        """One log line: ``Intel Xeon ... (2 CPUs): AVX2 AVX512F AVX512_VNNI ...``."""
        names = [k.upper() for k, v in asdict(self).items() if v is True]
        return f"{self.model} ({self.cpus} CPUs): {' '.join(names) or 'no AVX2'}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"fast_int8": self.fast_int8, "fast_bf16": self.fast_bf16}


def parse_cpuinfo(text: str, cpus: int | None = None) -> CpuIsa:
    """The :class:`CpuIsa` of a ``/proc/cpuinfo`` text (its first processor's ``flags``)."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    fields = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return CpuIsa(
        model=model or platform.processor() or platform.machine(),
        cpus=cpus if cpus is not None else (os.cpu_count() or 1),
        **{f: f in flags for f in fields},
    )


@functools.cache
def detect() -> CpuIsa:
    """This machine's :class:`CpuIsa` (cached)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
