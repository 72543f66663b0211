/* A libcurl client that keeps writing through a node's failure, as an application would:
 *
 *   cc writer_curl.c -lcurl -o writer_curl
 *   ./writer_curl SECONDS PREFIX HOST:PORT [HOST:PORT ...]
 *
 * Puts PREFIX:0, PREFIX:1, ... with the body "value N" for SECONDS over the HTTP/JSON API.
 * An error status (503 while a new leader is elected) retries the same key; a request that
 * cannot connect, breaks or times out moves to the next address, then retries the same key.
 * Prints each key whose PUT was acknowledged (200), one a line: every one of them must be
 * readable afterwards. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static size_t discard(char *bytes, size_t size, size_t count, void *user) {
    (void)bytes;
    (void)user;
    return size * count;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s SECONDS PREFIX HOST:PORT [HOST:PORT ...]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* each key as soon as it is acknowledged */
    double deadline = now() + atof(argv[1]);
    const char *prefix = argv[2];
    char **addresses = argv + 3;
    int count = argc - 3, at = 0, errors = 0;
    long n = 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* One handle for the whole run: it keeps its connection alive between requests. */
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/octet-stream");
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 2L);
    /* Above the node's own 10 s wait for a leader: a slow election answers 503. */
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 12L);
    while (now() < deadline) {
        char url[512], value[64];
        snprintf(url, sizeof url, "http://%s/v1/kv/%s:%ld", addresses[at % count], prefix, n);
        snprintf(value, sizeof value, "value %ld", n);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, value);
        CURLcode code = curl_easy_perform(curl);
        long status = 0;
        if (code == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            printf("%s:%ld\n", prefix, n++);
            continue;
        }
        if (code != CURLE_OK) at++; /* no connection, or it broke: the next node */
        errors++;
        usleep(50 * 1000);
    }
    fprintf(stderr, "# %ld acknowledged, %d errors\n", n, errors);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    curl_global_cleanup();
    return 0;
}
