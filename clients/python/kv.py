#!/usr/bin/env python3
"""Quorum from Python, unchanged libraries only: urllib (the standard library) and requests
for the HTTP/JSON API, redis-py for the Redis protocol.

    python3 kv.py HTTP_HOST:PORT REDIS_HOST:PORT NAME

Writes NAME:http over HTTP and NAME:redis over the Redis protocol, reads back a key another
client wrote (native:greeting), runs a compare-and-set that succeeds and one that fails,
stores a binary value through the base64 envelope; through redis-py, a key SET with PX 1000
is gone once it expires. Prints one line per check; exits 1 at the first wrong answer.
(http_coordination.py runs leases, locks and watches over HTTP; coordination.py the
keyspace subscriptions over RESP.)
"""
import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import redis
import requests


def check(what, got, want):
    if got != want:
        print(f"FAILED {what}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {what}")


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def main():
    http_address, redis_address, name = sys.argv[1:4]
    base = f"http://{http_address}/v1"
    key = urllib.parse.quote(f"{name}:http", safe="")

    # HTTP through urllib: put a raw body, get it back as JSON.
    status, _ = http("PUT", f"{base}/kv/{key}", f"written by {name} over HTTP".encode())
    check("urllib put", status, 200)
    status, body = http("GET", f"{base}/kv/{key}")
    check("urllib get", (status, json.loads(body)["value"]), (200, f"written by {name} over HTTP"))
    status, body = http("GET", f"{base}/kv/native%3Agreeting")
    check("urllib reads the native client's write", json.loads(body)["value"], "from the native client")
    status, body = http("GET", f"{base}/kv/{name}%3Anever-written")
    check("urllib missing key", (status, json.loads(body)["error"]["code"]), (404, "key_not_found"))

    # Compare-and-set: set if absent, then a stale expectation is refused with 409.
    cas = f"{base}/cas/{urllib.parse.quote(name + ':cas', safe='')}"
    json_type = {"Content-Type": "application/json"}
    status, body = http("POST", cas, json.dumps({"expected": None, "value": "one"}).encode(), json_type)
    check("cas from absent", (status, json.loads(body)["succeeded"]), (200, True))
    status, body = http("POST", cas, json.dumps({"expected": "zero", "value": "two"}).encode(), json_type)
    reply = json.loads(body)
    check("cas mismatch", (status, reply["error"]["code"], reply["current"]), (409, "cas_mismatch", "one"))

    # requests, with a binary value in the base64 envelope and read back raw.
    binary = bytes(range(256))
    url = f"{base}/kv/{name}%3Abinary%FF"
    response = requests.put(url, json={"value_base64": base64.b64encode(binary).decode()}, timeout=15)
    check("requests put binary", response.status_code, 200)
    response = requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=15)
    check("requests get binary raw", response.content, binary)
    response = requests.get(url, timeout=15)
    check("requests get binary as base64", base64.b64decode(response.json()["value_base64"]), binary)

    # redis-py.
    host, port = redis_address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=15)
    check("redis-py ping", client.ping(), True)
    check("redis-py set", client.set(f"{name}:redis", f"written by {name} over RESP"), True)
    check("redis-py get", client.get(f"{name}:redis"), f"written by {name} over RESP".encode())
    check("redis-py reads the HTTP write", client.get(f"{name}:http"), f"written by {name} over HTTP".encode())
    check("redis-py set nx (absent)", client.set(f"{name}:nx", "first", nx=True), True)
    check("redis-py set nx (present)", client.set(f"{name}:nx", "second", nx=True), None)
    check("redis-py incr", [client.incr(f"{name}:counter") for _ in range(3)], [1, 2, 3])
    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"{name}:pipe:{i}", str(i))
    pipe.get(f"{name}:pipe:49")
    check("redis-py pipeline", pipe.execute()[-1], b"49")
    check("redis-py mget", client.mget([f"{name}:pipe:1", f"{name}:absent"]), [b"1", None])
    check("redis-py delete", client.delete(f"{name}:pipe:1", f"{name}:absent"), 1)
    # An expiry lives by a lease of the store: the key is gone within 10 s (no keep-alive).
    check("redis-py set px", client.set(f"{name}:expiring", "v", px=1000), True)
    check("redis-py pttl counts down", 0 < client.pttl(f"{name}:expiring") <= 1000, True)
    deadline = time.monotonic() + 10
    while client.get(f"{name}:expiring") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    check("redis-py the key is gone once it expires", client.exists(f"{name}:expiring"), 0)
    try:
        client.execute_command("FROBNICATE", "x")
        check("redis-py unknown command", "no error", "an error")
    except redis.ResponseError as error:
        check("redis-py unknown command", str(error).startswith("unknown command 'FROBNICATE'"), True)
    print(f"OK {name}")


if __name__ == "__main__":
    main()
