#!/usr/bin/env python3
"""A redis-py client that keeps writing through a node's failure, as an application would:

    python3 writer.py SECONDS PREFIX REDIS_HOST:PORT [REDIS_HOST:PORT ...]

Sets PREFIX:0, PREFIX:1, ... one after another for SECONDS; on an error (a timeout while a
new leader is elected, a connection reset by a node that died) it reconnects, to the next
address if the connection failed, and retries the same key. Prints each key whose SET was
acknowledged, one a line: every one of them must be readable afterwards.
"""
import sys
import time

import redis


def main():
    seconds, prefix, addresses = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    at, n, errors = 0, 0, 0
    deadline = time.monotonic() + seconds

    def connect(index):
        host, port = addresses[index % len(addresses)].rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), socket_timeout=12, socket_connect_timeout=2)

    client = connect(at)
    while time.monotonic() < deadline:
        key = f"{prefix}:{n}"
        try:
            if client.set(key, f"value {n}"):
                print(key, flush=True)
                n += 1
        except redis.ConnectionError:
            errors += 1
            at += 1
            client = connect(at)
            time.sleep(0.05)
        except redis.ResponseError:
            # TRYAGAIN: no leader yet; the same key again.
            errors += 1
            time.sleep(0.05)
    print(f"# {n} acknowledged, {errors} errors", file=sys.stderr)


if __name__ == "__main__":
    main()
