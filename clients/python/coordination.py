#!/usr/bin/env python3
"""Quorum's Redis transactions, scans and keyspace subscriptions from redis-py, unchanged.

    python3 coordination.py REDIS_HOST:PORT OTHER_REDIS_HOST:PORT

Through the first node: an optimistic transaction (WATCH, then MULTI/EXEC in a pipeline) that
succeeds, and one that fails with WatchError because a client of the other node changed the
watched key; a transaction over keys of two shards refused with CROSSSLOT. SCAN (scan_iter)
and KEYS of a prefix, and KEYS of another glob refused. A pubsub on __keyspace@0__:KEY and on
__keyspace@0__:PREFIX* gets the writes of a client of the other node. Prints one line per
check and `OK coordination` at the end; exits 1 at the first wrong answer.
"""
import sys
import time

import redis


def check(what, got, want):
    if got != want:
        print(f"FAILED {what}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {what}")


def connect(address):
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=15)


def transactions(mine, theirs):
    # The keys share the hash tag {acct}, so they lie on one shard.
    mine.set("{acct}:balance", "10")
    with mine.pipeline(transaction=True) as pipe:
        pipe.watch("{acct}:balance")
        balance = int(pipe.get("{acct}:balance"))
        pipe.multi()
        pipe.set("{acct}:balance", balance - 3)
        pipe.incr("{acct}:spent", 3)
        pipe.get("{acct}:balance")
        check("a watched transaction commits", pipe.execute(), [True, 3, b"7"])

    with mine.pipeline(transaction=True) as pipe:
        pipe.watch("{acct}:balance")
        pipe.get("{acct}:balance")
        theirs.set("{acct}:balance", "100")  # another client, through another node
        pipe.multi()
        pipe.set("{acct}:balance", "0")
        try:
            pipe.execute()
            outcome = "committed"
        except redis.WatchError:
            outcome = "WatchError"
        check("a transaction whose watched key changed fails", outcome, "WatchError")
    check("the other client's write stands", mine.get("{acct}:balance"), b"100")

    # Without a hash tag keys spread over the shards: some pair lands on two.
    refused = None
    for i in range(1, 40):
        try:
            with mine.pipeline(transaction=True) as pipe:
                pipe.set("spread:0", "x")
                pipe.set(f"spread:{i}", "x")
                pipe.execute()
        except redis.ResponseError as error:
            refused = str(error)
            break
    check("a transaction over two shards is refused with CROSSSLOT",
          refused is not None and "CROSSSLOT" in refused and "hash tag" in refused, True)


def scans(mine):
    wanted = {f"scan:{i}".encode() for i in range(25)}
    mine.mset({key: "v" for key in wanted})
    mine.set("scanx", "not under the prefix")
    check("scan_iter lists the prefix's keys", set(mine.scan_iter(match="scan:*", count=4)), wanted)
    check("KEYS lists them too", set(mine.keys("scan:*")), wanted)
    try:
        mine.keys("scan:?")
        refused = ""
    except redis.ResponseError as error:
        refused = str(error)
    check("KEYS with a glob that is not a prefix is refused", "only prefix patterns" in refused, True)


def next_message(pubsub, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            return message
    return None


def subscriptions(mine, theirs):
    pubsub = mine.pubsub()
    pubsub.subscribe("__keyspace@0__:sub:k")
    pubsub.psubscribe("__keyspace@0__:subp:*")
    # Both confirmations: from then on every change is delivered.
    confirmed = [pubsub.get_message(timeout=10) for _ in range(2)]
    check("subscriptions are confirmed", [m and m["type"] for m in confirmed],
          ["subscribe", "psubscribe"])
    theirs.set("sub:k", "v")  # another client, through another node
    message = next_message(pubsub)
    check("a SET is published on the key's channel",
          message and (message["type"], message["channel"], message["data"]),
          ("message", b"__keyspace@0__:sub:k", b"set"))
    theirs.delete("subp:x")
    theirs.set("subp:x", "1")
    theirs.delete("subp:x")
    got = [next_message(pubsub) for _ in range(2)]
    check("a prefix's SET and DEL reach its pattern",
          [m and (m["type"], m["pattern"], m["channel"], m["data"]) for m in got],
          [("pmessage", b"__keyspace@0__:subp:*", b"__keyspace@0__:subp:x", b"set"),
           ("pmessage", b"__keyspace@0__:subp:*", b"__keyspace@0__:subp:x", b"del")])
    pubsub.unsubscribe()
    pubsub.punsubscribe()
    pubsub.close()


def main():
    mine, theirs = connect(sys.argv[1]), connect(sys.argv[2])
    transactions(mine, theirs)
    scans(mine)
    subscriptions(mine, theirs)
    print("OK coordination")


if __name__ == "__main__":
    main()
