"""Benchmarks (run by `operando-monitor bench ...`; not imported by the daemon)."""


def host_info() -> dict[str, object]:
    """CPU model, inference ISA flags and load average: recorded beside every bench figure."""
    import os

    from engines.isa import detect

    isa = detect()
    return {
        "cpu_model": isa.model,
        "cpus": isa.cpus,
        "isa": isa.summary(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
