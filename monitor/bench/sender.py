"""Benchmark sender: array-1.0 frames as fast as a PUSH socket takes them.

The pixel payloads are synthesised and encoded once, then re-sent with fresh headers, so the
sender costs almost nothing and the measurement is of the receiving side.
Usage: python -m monitor.bench.sender ENDPOINT SIZE COUNT
"""

from __future__ import annotations

import itertools
import sys

import zmq

from monitor.sim.array10 import encode_array10, series_end, series_start, synthetic_frames


def main(argv: list[str]) -> int:
    endpoint, size, count = argv[0], int(argv[1]), int(argv[2])
    bank = list(itertools.islice(synthetic_frames((size, size), "uint16", seed=1), 4))
    payloads = [encode_array10(a, frame=0)[1] for a in bank]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 30000)
    sock.bind(endpoint)
    sock.send_multipart(series_start("bench"))
    for i in range(count):
        header = encode_array10(bank[i % 4][:1, :1], frame=i, series="bench")[0]
        # Patch the 1×1 header to the real shape (cheap string work, no pixel copy).
        header = header.replace(b"[1, 1]", f"[{size}, {size}]".encode(), 1)
        sock.send_multipart([header, payloads[i % 4]], copy=False)
    sock.send_multipart(series_end("bench"))
    sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
