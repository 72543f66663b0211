/* Quorum from C through libcurl and the HTTP/JSON API, unchanged.
 *
 *   cc kv_curl.c -lcurl -o kv_curl && ./kv_curl HOST:PORT NAME
 *
 * Puts NAME:http as a raw body, gets it back raw (Accept: application/octet-stream), reads a
 * key another client wrote, checks a missing key's 404 and a refused compare-and-set's 409;
 * prints one line per check, exits 1 at the first wrong answer. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    curl_global_cleanup();
    printf("OK %s\n", name);
    return 0;
}
