// Quorum from Go: redigo for the Redis protocol and net/http for the HTTP/JSON API, both
// unchanged.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run kv_redigo.go HTTP_HOST:PORT REDIS_HOST:PORT NAME
//
// Sets NAME:redis with redigo, reads it and a key another client wrote, pipelines SETs,
// runs SET NX; puts NAME:http over HTTP and reads it back through redigo. Prints one line
// per check, exits 1 at the first wrong answer.
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
	fmt.Printf("OK %s\n", name)
}
