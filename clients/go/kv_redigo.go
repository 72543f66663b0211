// Quorum from Go: redigo for the Redis protocol and net/http for the HTTP/JSON API, both
// unchanged.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run kv_redigo.go HTTP_HOST:PORT REDIS_HOST:PORT NAME
//
// Sets NAME:redis with redigo, reads it and a key another client wrote, pipelines SETs,
// runs SET NX; a key SET with PX 1000 is gone once it expires, and a SUBSCRIBE to a key's
// keyspace channel sees a later SET (Redis has no lock with a fencing token). Puts NAME:http
// over HTTP, reads it back through redigo, and runs a compare-and-set that succeeds and one
// refused (409). Then the coordination API over HTTP: a key living by a lease disappears when the lease expires; a
// lock whose holder's lease expires passes to another lease with a larger fencing token, and
// a fenced write with the old token is refused (412); a watch started from an earlier
// revision sees a later put. Prints one line per check, exits 1 at the first wrong answer.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

func check(what string, got, want interface{}) {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		fmt.Printf("FAILED %s: got %v, want %v\n", what, got, want)
		os.Exit(1)
	}
	fmt.Printf("ok %s\n", what)
}

// One HTTP request; its status and body. A body that starts with '{' is sent as JSON.
func call(client *http.Client, method, url, body string) (int, string) {
	request, _ := http.NewRequest(method, url, strings.NewReader(body))
	if strings.HasPrefix(body, "{") {
		request.Header.Set("Content-Type", "application/json")
	}
	response, err := client.Do(request)
	if err != nil {
		fmt.Printf("FAILED %s %s: %v\n", method, url, err)
		os.Exit(1)
	}
	defer response.Body.Close()
	reply, _ := io.ReadAll(response.Body)
	return response.StatusCode, string(reply)
}

// The number FIELD of a JSON object (revisions, lease ids and tokens are 64-bit: not floats).
func number(body, field string) uint64 {
	var object map[string]json.RawMessage
	json.Unmarshal([]byte(body), &object)
	var n uint64
	json.Unmarshal(object[field], &n)
	return n
}

// Grants a lease of ttlMs; its id.
func grantLease(client *http.Client, base string, ttlMs int) uint64 {
	status, body := call(client, "POST", base+"/leases", fmt.Sprintf(`{"ttl_ms":%d}`, ttlMs))
	check("net/http grants a lease", status, 200)
	return number(body, "id")
}

// Takes lock (its path, percent-encoded) for lease, waiting up to 10 s; its fencing token.
func takeLock(client *http.Client, base, lock string, lease uint64) uint64 {
	status, body := call(client, "POST", base+"/locks/"+lock, fmt.Sprintf(`{"lease":%d,"timeout_ms":10000}`, lease))
	check("net/http takes the lock", status, 200)
	return number(body, "token")
}

// (1) A key living by a lease of 2 s is gone once the lease expires (no keep-alive).
func leaseExpires(client *http.Client, base, name string) {
	lease := grantLease(client, base, 2000)
	status, _ := call(client, "PUT", fmt.Sprintf("%s/kv/%s-leased?lease=%d", base, name, lease), "lives by a lease")
	check("net/http put with a lease", status, 200)
	status, body := call(client, "GET", base+"/kv/"+name+"-leased", "")
	check("net/http reads the leased key", status == 200 && strings.Contains(body, `"value":"lives by a lease"`), true)
	for waited := 0; status == 200 && waited < 10000; waited += 200 {
		time.Sleep(200 * time.Millisecond)
		status, _ = call(client, "GET", base+"/kv/"+name+"-leased", "")
	}
	check("net/http the leased key is gone once the lease expires", status, 404)
}

// (2) A lock and fenced writes: A's lease expires, B takes the lock with a larger token, and
// A's late write with its old token is refused. The lock and the key share the hash tag
// {NAME} (percent-encoded: %7B, %7D), so they lie on one shard.
func lockAndFence(client *http.Client, base, name string) {
	lock, key := "%7B"+name+"%7D-lock", "%7B"+name+"%7D-fenced"
	fenced := func(token uint64, value string) (int, string) {
		return call(client, "PUT", fmt.Sprintf("%s/kv/%s?lock=%s&token=%d", base, key, lock, token), value)
	}
	a := grantLease(client, base, 1500)
	t1 := takeLock(client, base, lock, a)
	status, _ := fenced(t1, "by A")
	check("net/http fenced write with the holder's token", status, 200)
	// A is not kept alive: B waits in line until A's lease expires.
	b := grantLease(client, base, 60000)
	t2 := takeLock(client, base, lock, b)
	check("net/http the next holder's token is larger", t2 > t1, true)
	status, body := fenced(t1, "late A")
	check("net/http fenced write with the old token is 412", status == 412 && strings.Contains(body, "fence_failed"), true)
	status, _ = fenced(t2, "by B")
	check("net/http fenced write with the new token", status, 200)
	status, body = call(client, "DELETE", fmt.Sprintf("%s/locks/%s?lease=%d", base, lock, b), "")
	check("net/http releases the lock", strings.Contains(body, `"released":true`), true)
	call(client, "DELETE", fmt.Sprintf("%s/leases/%d", base, b), "")
}

// (3) A watch resumes from a revision: started after a put, from the revision before it, it
// still gets that put; each change is one JSON line.
func watchFromRevision(client *http.Client, base, name string) {
	url := base + "/kv/" + name + "-watched"
	call(client, "PUT", url, "before")
	status, body := call(client, "GET", url+"?meta=true", "")
	before := number(body, "mod_revision")
	check("net/http reads the put's revision", status == 200 && before != 0, true)
	status, _ = call(client, "PUT", url, "after")
	check("net/http a later put", status, 200)
	status, body = call(client, "GET", fmt.Sprintf("%s/watch?key=%s-watched&revision=%d&limit=1&timeout_ms=5000", base, name, before+1), "")
	var event struct {
		Revision uint64
		Type     string
		Key      string
		Value    string
	}
	json.Unmarshal([]byte(strings.SplitN(body, "\n", 2)[0]), &event)
	check("net/http the watch sees the later put",
		status == 200 && event.Type == "put" && event.Value == "after" && event.Revision > before, true)
}

// A key SET with PX 1000 lives by a lease of the store: gone within 10 s (no keep-alive).
func redisExpiry(conn redis.Conn, name string) {
	reply, _ := redis.String(conn.Do("SET", name+":expiring", "v", "PX", 1000))
	check("redigo set px", reply, "OK")
	pttl, _ := redis.Int(conn.Do("PTTL", name+":expiring"))
	check("redigo pttl counts down", pttl > 0 && pttl <= 1000, true)
	_, err := redis.String(conn.Do("GET", name+":expiring"))
	for waited := 0; err == nil && waited < 10000; waited += 100 {
		time.Sleep(100 * time.Millisecond)
		_, err = redis.String(conn.Do("GET", name+":expiring"))
	}
	check("redigo the key is gone once it expires", err, redis.ErrNil)
}

// A watch, as Redis names one: SUBSCRIBE to the key's keyspace channel on a connection of its
// own; a SET by the other connection after the confirmation arrives as a message.
func redisSubscription(address string, conn redis.Conn, name string) {
	other, err := redis.Dial("tcp", address)
	if err != nil {
		fmt.Printf("FAILED dial the subscriber: %v\n", err)
		os.Exit(1)
	}
	subscriber := redis.PubSubConn{Conn: other}
	defer subscriber.Close()
	channel := "__keyspace@0__:" + name + ":watched"
	subscriber.Subscribe(channel)
	confirmed, _ := subscriber.ReceiveWithTimeout(15 * time.Second).(redis.Subscription)
	check("redigo subscribe is confirmed", confirmed.Kind+" "+confirmed.Channel, "subscribe "+channel)
	reply, _ := redis.String(conn.Do("SET", name+":watched", "after"))
	check("redigo a later set", reply, "OK")
	message, _ := subscriber.ReceiveWithTimeout(15 * time.Second).(redis.Message)
	check("redigo the subscription sees the later set", message.Channel+" "+string(message.Data), channel+" set")
}

// Compare-and-set over HTTP: from absent, then a stale expectation refused with the current value.
func httpCas(client *http.Client, base, name string) {
	url := base + "/cas/" + name + ":cas"
	status, body := call(client, "POST", url, `{"expected":null,"value":"one"}`)
	check("net/http cas from absent", status == 200 && strings.Contains(body, `"succeeded":true`), true)
	status, body = call(client, "POST", url, `{"expected":"zero","value":"two"}`)
	check("net/http cas mismatch is 409", status == 409 && strings.Contains(body, `"current":"one"`), true)
}

func main() {
	httpAddress, redisAddress, name := os.Args[1], os.Args[2], os.Args[3]
	conn, err := redis.Dial("tcp", redisAddress, redis.DialReadTimeout(15*time.Second))
	if err != nil {
		fmt.Printf("FAILED dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	reply, err := redis.String(conn.Do("SET", name+":redis", "written by "+name+" over RESP"))
	check("redigo set", reply, "OK")
	value, err := redis.String(conn.Do("GET", name+":redis"))
	check("redigo get", value, "written by "+name+" over RESP")
	value, err = redis.String(conn.Do("GET", "native:greeting"))
	check("redigo reads the native client's write", value, "from the native client")
	_, err = conn.Do("GET", name+":absent")
	_, err = redis.String(conn.Do("GET", name+":absent"))
	check("redigo missing key is nil", err, redis.ErrNil)
	for i := 0; i < 100; i++ {
		conn.Send("SET", fmt.Sprintf("%s:pipe:%d", name, i), i)
	}
	conn.Send("GET", name+":pipe:99")
	conn.Flush()
	for i := 0; i < 100; i++ {
		if _, err := conn.Receive(); err != nil {
			fmt.Printf("FAILED redigo pipeline: %v\n", err)
			os.Exit(1)
		}
	}
	value, err = redis.String(conn.Receive())
	check("redigo pipeline", value, "99")
	_, err = redis.String(conn.Do("SET", name+":nx", "first", "NX"))
	check("redigo set nx", err, nil)
	_, err = redis.String(conn.Do("SET", name+":nx", "second", "NX"))
	check("redigo set nx again is nil", err, redis.ErrNil)
	redisExpiry(conn, name)
	redisSubscription(redisAddress, conn, name)

	url := "http://" + httpAddress + "/v1/kv/" + name + ":http"
	request, _ := http.NewRequest("PUT", url, strings.NewReader("written by "+name+" over HTTP"))
	client := &http.Client{Timeout: 15 * time.Second}
	response, err := client.Do(request)
	if err != nil {
		fmt.Printf("FAILED net/http put: %v\n", err)
		os.Exit(1)
	}
	response.Body.Close()
	check("net/http put", response.StatusCode, 200)
	response, err = client.Get(url)
	if err != nil {
		fmt.Printf("FAILED net/http get: %v\n", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(response.Body)
	response.Body.Close()
	var object map[string]string
	json.Unmarshal(body, &object)
	check("net/http get", object["value"], "written by "+name+" over HTTP")
	value, err = redis.String(conn.Do("GET", name+":http"))
	check("redigo reads the HTTP write", value, "written by "+name+" over HTTP")

	base := "http://" + httpAddress + "/v1"
	httpCas(client, base, name)
	leaseExpires(client, base, name)
	lockAndFence(client, base, name)
	watchFromRevision(client, base, name)
	fmt.Printf("OK %s\n", name)
}
