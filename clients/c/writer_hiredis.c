/* A hiredis client that keeps writing through a node's failure, as an application would:
 *
 *   cc writer_hiredis.c -lhiredis -o writer_hiredis
 *   ./writer_hiredis SECONDS PREFIX HOST:PORT [HOST:PORT ...]
 *
 * Sets PREFIX:0, PREFIX:1, ... to "value N" for SECONDS. An error reply (-TRYAGAIN while a new
 * leader is elected) retries the same key; a connection that breaks, times out or cannot be
 * made moves to the next address, then retries the same key. Prints each key whose SET was
 * acknowledged, one a line: every one of them must be readable afterwards. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A connection to HOST:PORT, or NULL. The reply timeout is above the node's own 10 s wait
 * for a leader, so a slow election answers -TRYAGAIN rather than timing out. */
static redisContext *connect_to(const char *address) {
    const char *colon = strrchr(address, ':');
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - address), address);
    struct timeval connect_timeout = {2, 0}, reply_timeout = {12, 0};
    redisContext *context = redisConnectWithTimeout(host, atoi(colon + 1), connect_timeout);
    if (context == NULL || context->err) {
        if (context != NULL) redisFree(context);
        return NULL;
    }
    redisSetTimeout(context, reply_timeout);
    return context;
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
    redisContext *context = connect_to(addresses[at]);
    while (now() < deadline) {
        if (context == NULL) {
            errors++;
            usleep(50 * 1000);
            context = connect_to(addresses[++at % count]);
            continue;
        }
        char key[256], value[64];
        snprintf(key, sizeof key, "%s:%ld", prefix, n);
        snprintf(value, sizeof value, "value %ld", n);
        redisReply *reply = redisCommand(context, "SET %s %s", key, value);
        if (reply == NULL) { /* broken or timed out: this connection is done */
            redisFree(context);
            context = NULL;
            continue;
        }
        if (reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0) {
            printf("%s\n", key);
            n++;
        } else { /* -TRYAGAIN: no leader yet; the same key again */
            errors++;
            usleep(50 * 1000);
        }
        freeReplyObject(reply);
    }
    fprintf(stderr, "# %ld acknowledged, %d errors\n", n, errors);
    return 0;
}
