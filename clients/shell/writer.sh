#!/usr/bin/env bash
# curl or redis-cli, one process a write, keeping on through a node's failure as a script would:
#
#   bash writer.sh curl|redis-cli SECONDS PREFIX HOST:PORT [HOST:PORT ...]
#
# Writes PREFIX:0, PREFIX:1, ... = "value N" for SECONDS, over the HTTP/JSON API (curl) or the
# Redis protocol (redis-cli). A refusal by a node that is up (503 or -TRYAGAIN while a new
# leader is elected) retries the same key; a connection that cannot be made or breaks moves to
# the next address, then retries the same key. Prints each key whose write was acknowledged,
# one a line: every one of them must be readable afterwards.
set -u
tool=$1 seconds=$2 prefix=$3
shift 3
addresses=("$@")

# put ADDRESS KEY N: prints `ok` once acknowledged; fails if the connection failed. curl's
# timeout is above the node's own 10 s wait for a leader: a slow election answers 503.
put_curl() {
    local code
    code=$(curl -s --connect-timeout 2 -m 12 -o /dev/null -w '%{http_code}' \
        -X PUT --data-binary "value $3" "http://$1/v1/kv/$2") || return 1
    if [ "$code" = 200 ]; then echo ok; fi
}

put_redis_cli() {
    local reply
    reply=$(redis-cli -h "${1%:*}" -p "${1##*:}" SET "$2" "value $3" 2>&1)
    case $reply in
        OK) echo ok ;;
        TRYAGAIN* | ERR*) ;;
        *) return 1 ;; # "Could not connect ...", "Error: Connection reset by peer"
    esac
}

at=0 n=0 errors=0 end=$((SECONDS + seconds))
while [ "$SECONDS" -lt "$end" ]; do
    if answer=$("put_${tool//-/_}" "${addresses[at % ${#addresses[@]}]}" "$prefix:$n" "$n"); then
        if [ "$answer" = ok ]; then
            echo "$prefix:$n"
            n=$((n + 1))
            continue
        fi
    else
        at=$((at + 1))
    fi
    errors=$((errors + 1))
    sleep 0.05
done
echo "# $n acknowledged, $errors errors" >&2
