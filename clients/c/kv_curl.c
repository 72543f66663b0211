/* Quorum from C through libcurl and the HTTP/JSON API, unchanged.
 *
 *   cc kv_curl.c -lcurl -o kv_curl && ./kv_curl HOST:PORT NAME
 *
 * Puts NAME:http as a raw body, gets it back raw (Accept: application/octet-stream), reads a
 * key another client wrote, checks a missing key's 404 and a refused compare-and-set's 409.
 * Then the coordination API: a key living by a lease disappears when the lease expires; a
 * lock whose holder's lease expires passes to another lease with a larger fencing token, and
 * a fenced write with the old token is refused (412); a watch started from an earlier
 * revision sees a put made before it began. Prints one line per check, exits 1 at the first
 * wrong answer. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct buffer {
    char data[65536];
    size_t length;
};

static size_t collect(char *bytes, size_t size, size_t count, void *user) {
    struct buffer *buffer = user;
    size_t length = size * count;
    if (buffer->length + length >= sizeof buffer->data) return 0;
    memcpy(buffer->data + buffer->length, bytes, length);
    buffer->length += length;
    buffer->data[buffer->length] = 0;
    return length;
}

/* One request; its status, the body in `out`. */
static long request(const char *method, const char *url, const char *body, const char *type,
                    const char *accept, struct buffer *out) {
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = NULL;
    out->length = 0;
    out->data[0] = 0;
    if (type) {
        char header[128];
        snprintf(header, sizeof header, "Content-Type: %s", type);
        headers = curl_slist_append(headers, header);
    }
    if (accept) {
        char header[128];
        snprintf(header, sizeof header, "Accept: %s", accept);
        headers = curl_slist_append(headers, header);
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 15L);
    if (body) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    long status = 0;
    CURLcode code = curl_easy_perform(curl);
    if (code != CURLE_OK) {
        printf("FAILED %s %s: %s\n", method, url, curl_easy_strerror(code));
        exit(1);
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    return status;
}

static void check(const char *what, int good, const char *got) {
    if (!good) {
        printf("FAILED %s: got %s\n", what, got);
        exit(1);
    }
    printf("ok %s\n", what);
}

/* The number after `"FIELD":` in a JSON body, 0 if absent (enough for this example). */
static unsigned long long json_number(const char *body, const char *field) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", field);
    const char *at = strstr(body, pattern);
    return at ? strtoull(at + strlen(pattern), NULL, 10) : 0;
}

/* Grants a lease of `ttl_ms`; its id. */
static unsigned long long grant_lease(const char *address, int ttl_ms) {
    char url[512], body[64];
    struct buffer out;
    snprintf(url, sizeof url, "http://%s/v1/leases", address);
    snprintf(body, sizeof body, "{\"ttl_ms\":%d}", ttl_ms);
    long status = request("POST", url, body, "application/json", NULL, &out);
    check("libcurl grants a lease", status == 200 && json_number(out.data, "id") != 0, out.data);
    return json_number(out.data, "id");
}

/* Takes lock `lock` (its path, percent-encoded) for `lease`, waiting up to 10 s; its token. */
static unsigned long long take_lock(const char *address, const char *lock, unsigned long long lease) {
    char url[512], body[128];
    struct buffer out;
    snprintf(url, sizeof url, "http://%s/v1/locks/%s", address, lock);
    snprintf(body, sizeof body, "{\"lease\":%llu,\"timeout_ms\":10000}", lease);
    long status = request("POST", url, body, "application/json", NULL, &out);
    check("libcurl takes the lock", status == 200 && json_number(out.data, "token") != 0, out.data);
    return json_number(out.data, "token");
}

/* A fenced write of `value` to `key` under `lock` with `token`; the status. */
static long fenced_put(const char *address, const char *key, const char *lock, unsigned long long token,
                       const char *value, struct buffer *out) {
    char url[512];
    snprintf(url, sizeof url, "http://%s/v1/kv/%s?lock=%s&token=%llu", address, key, lock, token);
    return request("PUT", url, value, "application/octet-stream", NULL, out);
}

/* (1) A key living by a lease of 2 s is gone once the lease expires (no keep-alive). */
static void lease_expires(const char *address, const char *name) {
    struct buffer out;
    char url[512];
    unsigned long long lease = grant_lease(address, 2000);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s-leased?lease=%llu", address, name, lease);
    long status = request("PUT", url, "lives by a lease", "application/octet-stream", NULL, &out);
    check("libcurl put with a lease", status == 200, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s-leased", address, name);
    status = request("GET", url, NULL, NULL, NULL, &out);
    check("libcurl reads the leased key", status == 200 && strstr(out.data, "\"value\":\"lives by a lease\""), out.data);
    for (int waited = 0; status == 200 && waited < 10000; waited += 200) {
        usleep(200 * 1000);
        status = request("GET", url, NULL, NULL, NULL, &out);
    }
    check("libcurl the leased key is gone once the lease expires", status == 404, out.data);
}

/* (2) A lock and fenced writes: A's lease expires, B takes the lock with a larger token, and
 * A's late write with its old token is refused. The lock and the key share the hash tag
 * {NAME} (percent-encoded: %7B, %7D), so they lie on one shard. */
static void lock_and_fence(const char *address, const char *name) {
    struct buffer out;
    char lock[256], key[256], url[512];
    snprintf(lock, sizeof lock, "%%7B%s%%7D-lock", name);
    snprintf(key, sizeof key, "%%7B%s%%7D-fenced", name);
    unsigned long long a = grant_lease(address, 1500);
    unsigned long long t1 = take_lock(address, lock, a);
    long status = fenced_put(address, key, lock, t1, "by A", &out);
    check("libcurl fenced write with the holder's token", status == 200, out.data);
    /* A is not kept alive: B waits in line until A's lease expires. */
    unsigned long long b = grant_lease(address, 60000);
    unsigned long long t2 = take_lock(address, lock, b);
    check("libcurl the next holder's token is larger", t2 > t1, "a smaller token");
    status = fenced_put(address, key, lock, t1, "late A", &out);
    check("libcurl fenced write with the old token is 412", status == 412 && strstr(out.data, "fence_failed"), out.data);
    status = fenced_put(address, key, lock, t2, "by B", &out);
    check("libcurl fenced write with the new token", status == 200, out.data);
    snprintf(url, sizeof url, "http://%s/v1/locks/%s?lease=%llu", address, lock, b);
    status = request("DELETE", url, NULL, NULL, NULL, &out);
    check("libcurl releases the lock", status == 200 && strstr(out.data, "\"released\":true"), out.data);
    snprintf(url, sizeof url, "http://%s/v1/leases/%llu", address, b);
    request("DELETE", url, NULL, NULL, NULL, &out);
}

/* (3) A watch resumes from a revision: started after a put, from the revision before it, it
 * still gets that put, so no second thread is needed. */
static void watch_from_revision(const char *address, const char *name) {
    struct buffer out;
    char url[512];
    snprintf(url, sizeof url, "http://%s/v1/kv/%s-watched", address, name);
    long status = request("PUT", url, "before", "application/octet-stream", NULL, &out);
    check("libcurl put", status == 200, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s-watched?meta=true", address, name);
    status = request("GET", url, NULL, NULL, NULL, &out);
    unsigned long long before = json_number(out.data, "mod_revision");
    check("libcurl reads the put's revision", status == 200 && before != 0, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s-watched", address, name);
    status = request("PUT", url, "after", "application/octet-stream", NULL, &out);
    check("libcurl a later put", status == 200, out.data);
    snprintf(url, sizeof url, "http://%s/v1/watch?key=%s-watched&revision=%llu&limit=1&timeout_ms=5000",
             address, name, before + 1);
    status = request("GET", url, NULL, NULL, NULL, &out);
    check("libcurl the watch sees the later put",
          status == 200 && strstr(out.data, "\"type\":\"put\"") && strstr(out.data, "\"value\":\"after\"") &&
              json_number(out.data, "revision") > before,
          out.data);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST:PORT NAME\n", argv[0]);
        return 2;
    }
    const char *address = argv[1], *name = argv[2];
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct buffer out;
    char url[512], value[128];
    snprintf(url, sizeof url, "http://%s/v1/kv/%s%%3Ahttp", address, name);
    snprintf(value, sizeof value, "written by %s over HTTP", name);
    long status = request("PUT", url, value, "application/octet-stream", NULL, &out);
    check("libcurl put", status == 200, out.data);
    status = request("GET", url, NULL, NULL, "application/octet-stream", &out);
    check("libcurl get raw", status == 200 && strcmp(out.data, value) == 0, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/native:greeting", address);
    status = request("GET", url, NULL, NULL, NULL, &out);
    check("libcurl reads the native client's write",
          status == 200 && strstr(out.data, "\"value\":\"from the native client\"") != NULL, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s:never-written", address, name);
    status = request("GET", url, NULL, NULL, NULL, &out);
    check("libcurl missing key is 404", status == 404 && strstr(out.data, "key_not_found") != NULL, out.data);
    snprintf(url, sizeof url, "http://%s/v1/cas/%s:cas", address, name);
    status = request("POST", url, "{\"expected\":null,\"value\":\"one\"}", "application/json", NULL, &out);
    check("libcurl cas", status == 200 && strstr(out.data, "\"succeeded\":true") != NULL, out.data);
    status = request("POST", url, "{\"expected\":\"zero\",\"value\":\"two\"}", "application/json", NULL, &out);
    check("libcurl cas mismatch is 409", status == 409 && strstr(out.data, "\"current\":\"one\"") != NULL, out.data);
    status = request("PUT", url, "{not json", "application/json", NULL, &out);
    check("libcurl wrong method is 405", status == 405, out.data);
    snprintf(url, sizeof url, "http://%s/v1/kv/%s:bad", address, name);
    status = request("PUT", url, "{not json", "application/json", NULL, &out);
    check("libcurl bad JSON is 400", status == 400 && strstr(out.data, "bad_json") != NULL, out.data);
    lease_expires(address, name);
    lock_and_fence(address, name);
    watch_from_revision(address, name);
    curl_global_cleanup();
    printf("OK %s\n", name);
    return 0;
}
