#!/usr/bin/env python3
"""fdatasync latency when 1, 2 and 3 processes sync their own files at once (three nodes' logs
share one disk). Each process rewrites 4 KiB then syncs, 3,000 times, in a temporary
directory on the disk holding DIR (default: the current directory).
    scripts/fsync-concurrent.py [DIR]
"""
import multiprocessing as mp
import os
import sys
import tempfile
import time


def worker(path, rounds, results):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    block = b"x" * 4096
    latencies = []
    for k in range(rounds):
        os.pwrite(fd, block, (k % 1024) * 4096)
        start = time.perf_counter()
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - start)
    os.close(fd)
    latencies.sort()
    results.put((latencies[len(latencies) // 2], latencies[len(latencies) * 99 // 100]))


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "."
    with tempfile.TemporaryDirectory(dir=base) as work:
        for procs in (1, 2, 3):
            results = mp.Queue()
            workers = [
                mp.Process(target=worker, args=(os.path.join(work, f"f{i}"), 3000, results))
                for i in range(procs)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            got = [results.get() for _ in workers]
            p50 = ", ".join(f"{p * 1e6:.0f}" for p, _ in got)
            p99 = ", ".join(f"{q * 1e6:.0f}" for _, q in got)
            print(f"{procs} at once: fdatasync p50 µs [{p50}], p99 µs [{p99}]")


if __name__ == "__main__":
    main()
