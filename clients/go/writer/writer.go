// A Go client that keeps writing through a node's failure, as an application would: redigo
// over the Redis protocol, or net/http over the HTTP/JSON API, both unchanged.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o writer writer.go
//	./writer resp|http SECONDS PREFIX HOST:PORT [HOST:PORT ...]
//
// Writes PREFIX:0, PREFIX:1, ... = "value N" for SECONDS. A refusal by a node that is up
// (-TRYAGAIN or 503 while a new leader is elected) retries the same key; a connection that
// breaks, times out or cannot be made moves to the next address, then retries the same key.
// Prints each key whose write was acknowledged, one a line: every one of them must be
// readable afterwards.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A write of key = value through the node at address: true once acknowledged, false if the
// node refused it, an error if the connection failed.
type write func(address, key, value string) (bool, error)

// Writes over one redigo connection, to the node of the moment. Its read timeout is above
// the node's own 10 s wait for a leader, so a slow election answers -TRYAGAIN, not a timeout.
func overRESP() write {
	var conn redis.Conn
	return func(address, key, value string) (bool, error) {
		if conn == nil {
			var err error
			conn, err = redis.Dial("tcp", address,
				redis.DialConnectTimeout(2*time.Second), redis.DialReadTimeout(12*time.Second))
			if err != nil {
				return false, err
			}
		}
		_, err := conn.Do("SET", key, value)
		if _, refused := err.(redis.Error); refused {
			return false, nil
		}
		if err != nil { // the connection is done: the next one is to another node
			conn.Close()
			conn = nil
			return false, err
		}
		return true, nil
	}
}

// Writes through one net/http client, which keeps its connections alive; the timeout is
// above the node's 10 s wait for a leader, as for redigo.
func overHTTP() write {
	client := &http.Client{Timeout: 12 * time.Second}
	return func(address, key, value string) (bool, error) {
		request, _ := http.NewRequest("PUT", "http://"+address+"/v1/kv/"+key, strings.NewReader(value))
		response, err := client.Do(request)
		if err != nil {
			return false, err
		}
		io.Copy(io.Discard, response.Body) // read to the end, so the connection is kept alive
		response.Body.Close()
		return response.StatusCode == 200, nil
	}
}

func main() {
	if len(os.Args) < 5 || os.Args[1] != "resp" && os.Args[1] != "http" {
		fmt.Fprintln(os.Stderr, "usage: writer resp|http SECONDS PREFIX HOST:PORT [HOST:PORT ...]")
		os.Exit(2)
	}
	put := overHTTP()
	if os.Args[1] == "resp" {
		put = overRESP()
	}
	seconds, _ := strconv.ParseFloat(os.Args[2], 64)
	prefix, addresses := os.Args[3], os.Args[4:]
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	at, n, errors := 0, 0, 0
	for time.Now().Before(deadline) {
		key := fmt.Sprintf("%s:%d", prefix, n)
		acknowledged, err := put(addresses[at%len(addresses)], key, fmt.Sprintf("value %d", n))
		if acknowledged {
			fmt.Println(key) // os.Stdout is not buffered: the line is out at once
			n++
			continue
		}
		if err != nil {
			at++
		}
		errors++
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "# %d acknowledged, %d errors\n", n, errors)
}
