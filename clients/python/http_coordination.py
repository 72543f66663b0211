#!/usr/bin/env python3
"""Quorum's coordination API over HTTP from Python's standard library alone (urllib, and
http.client to read a watch's stream line by line).

    python3 http_coordination.py HTTP_HOST:PORT NAME

The steps of clients/go/kv_redigo.go: a key living by a lease disappears when the lease
expires; a lock whose holder's lease expires passes to another lease with a larger fencing
token, and a fenced write with the old token is refused (412); a watch started from an earlier
revision sees a later put. Prints one line per check and `OK NAME` at the end; exits 1 at the
first wrong answer.
"""
import http.client
import json
import sys
import time
import urllib.error
import urllib.request


def check(what, got, want):
    if got != want:
        print(f"FAILED {what}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {what}")


def call(method, url, body=None):
    """One request; its status and its body parsed as JSON (None if it is not JSON). A dict
    body is sent as JSON, a str as a raw value."""
    headers = {}
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    elif isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def grant_lease(base, ttl_ms):
    status, body = call("POST", f"{base}/leases", {"ttl_ms": ttl_ms})
    check("urllib grants a lease", status, 200)
    return body["id"]  # json gives 64-bit integers exactly (Python ints are not doubles)


def take_lock(base, lock, lease):
    """Takes lock (its path, percent-encoded) for lease, waiting up to 10 s; its token."""
    status, body = call("POST", f"{base}/locks/{lock}", {"lease": lease, "timeout_ms": 10000})
    check("urllib takes the lock", status, 200)
    return body["token"]


def lease_expires(base, name):
    """(1) A key living by a lease of 2 s is gone once the lease expires (no keep-alive)."""
    lease = grant_lease(base, 2000)
    url = f"{base}/kv/{name}-leased"
    status, _ = call("PUT", f"{url}?lease={lease}", "lives by a lease")
    check("urllib put with a lease", status, 200)
    status, body = call("GET", url)
    check("urllib reads the leased key", (status, body and body.get("value")), (200, "lives by a lease"))
    deadline = time.monotonic() + 10
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, _ = call("GET", url)
    check("urllib the leased key is gone once the lease expires", status, 404)


def lock_and_fence(base, name):
    """(2) A's lease expires, B takes the lock with a larger token, and A's late write with its
    old token is refused. The lock and the key share the hash tag {NAME} (percent-encoded), so
    they lie on one shard."""
    lock, key = f"%7B{name}%7D-lock", f"%7B{name}%7D-fenced"

    def fenced(token, value):
        return call("PUT", f"{base}/kv/{key}?lock={lock}&token={token}", value)

    a = grant_lease(base, 1500)
    t1 = take_lock(base, lock, a)
    check("urllib fenced write with the holder's token", fenced(t1, "by A")[0], 200)
    # A is not kept alive: B waits in line until A's lease expires.
    b = grant_lease(base, 60000)
    t2 = take_lock(base, lock, b)
    check("urllib the next holder's token is larger", t2 > t1, True)
    status, body = fenced(t1, "late A")
    check("urllib fenced write with the old token is 412",
          (status, (body or {}).get("error", {}).get("code")), (412, "fence_failed"))
    check("urllib fenced write with the new token", fenced(t2, "by B")[0], 200)
    status, body = call("GET", f"{base}/kv/{key}")
    check("urllib the fenced key holds the new holder's write", body and body.get("value"), "by B")
    status, body = call("DELETE", f"{base}/locks/{lock}?lease={b}")
    check("urllib releases the lock", (status, body), (200, {"released": True}))
    call("DELETE", f"{base}/leases/{b}")


def first_watch_line(address, path, seconds=15):
    """The status and the first line of a watch's stream, read as it arrives (not at the
    stream's end), within `seconds`; a socket timeout fails the check rather than hanging."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=seconds)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.readline()
    except OSError as error:  # socket.timeout is an OSError
        return None, f"no line within {seconds} s: {error}".encode()
    finally:
        connection.close()


def watch_from_revision(address, base, name):
    """(3) Started after a put, from the revision before it, a watch still gets that put;
    each change is one JSON line."""
    url = f"{base}/kv/{name}-watched"
    call("PUT", url, "before")
    status, body = call("GET", f"{url}?meta=true")
    before = body and body.get("mod_revision")
    check("urllib reads the put's revision", status == 200 and isinstance(before, int) and before > 0, True)
    check("urllib a later put", call("PUT", url, "after")[0], 200)
    status, line = first_watch_line(
        address, f"/v1/watch?key={name}-watched&revision={before + 1}&limit=1&timeout_ms=5000")
    try:
        event = json.loads(line)
    except ValueError:
        event = {"unreadable": line.decode(errors="replace")}
    check("urllib the watch sees the later put",
          (status, event.get("type"), event.get("key"), event.get("value"),
           isinstance(event.get("revision"), int) and event["revision"] > before),
          (200, "put", f"{name}-watched", "after", True))


def main():
    address, name = sys.argv[1:3]
    base = f"http://{address}/v1"
    lease_expires(base, name)
    lock_and_fence(base, name)
    watch_from_revision(address, base, name)
    print(f"OK {name}")


if __name__ == "__main__":
    main()
