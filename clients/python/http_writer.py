#!/usr/bin/env python3
"""A urllib client (the standard library alone) that keeps writing through a node's failure,
as an application would:

    python3 http_writer.py SECONDS PREFIX HOST:PORT [HOST:PORT ...]

Puts PREFIX:0, PREFIX:1, ... with the body "value N" for SECONDS over the HTTP/JSON API. An
error status (503 while a new leader is elected) retries the same key; a request that cannot
connect, breaks or times out moves to the next address, then retries the same key. Prints each
key whose PUT was acknowledged (200), one a line: every one of them must be readable
afterwards.
"""
import http.client
import sys
import time
import urllib.error
import urllib.request


def main():
    seconds, prefix, addresses = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    at, n, errors = 0, 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = f"{prefix}:{n}"
        url = f"http://{addresses[at % len(addresses)]}/v1/kv/{key}"
        request = urllib.request.Request(url, data=f"value {n}".encode(), method="PUT")
        try:
            # Above the node's own 10 s wait for a leader: a slow election answers 503.
            with urllib.request.urlopen(request, timeout=12):
                pass
            print(key, flush=True)
            n += 1
            continue
        except urllib.error.HTTPError:
            pass  # 503: no leader yet; the same key again
        except (OSError, http.client.HTTPException):
            at += 1  # no connection, or it broke: the next node
        errors += 1
        time.sleep(0.05)
    print(f"# {n} acknowledged, {errors} errors", file=sys.stderr)


if __name__ == "__main__":
    main()
