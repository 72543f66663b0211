/* Quorum from C through hiredis, the Redis protocol's C client, unchanged.
 *
 *   cc kv_hiredis.c -lhiredis -o kv_hiredis && ./kv_hiredis HOST PORT NAME
 *
 * Sets NAME:hiredis, reads it back and a key another client wrote (native:greeting),
 * pipelines 100 SETs and a GET, runs SET NX and INCR. Then what Redis itself offers of the
 * coordination scenario (it has no lock with a fencing token): a key SET with PX 1000 is gone
 * once it expires, and a SUBSCRIBE to the key's keyspace channel sees a later SET by another
 * connection. Prints one line per check, exits 1 at the first wrong answer. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_string(const char *what, redisReply *reply, const char *want) {
    if (reply == NULL || reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_STATUS ||
        strcmp(reply->str, want) != 0) {
        printf("FAILED %s: got %s, want %s\n", what, reply && reply->str ? reply->str : "(no string)", want);
        exit(1);
    }
    printf("ok %s\n", what);
    freeReplyObject(reply);
}

static void check_integer(const char *what, redisReply *reply, long long want) {
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != want) {
        printf("FAILED %s: got type %d, want %lld\n", what, reply ? reply->type : -1, want);
        exit(1);
    }
    printf("ok %s\n", what);
    freeReplyObject(reply);
}

static void check_true(const char *what, int good, redisReply *reply) {
    if (!good) {
        printf("FAILED %s: got type %d\n", what, reply ? reply->type : -1);
        exit(1);
    }
    printf("ok %s\n", what);
    freeReplyObject(reply);
}

/* A key SET with PX 1000 lives by a lease of the store: gone within 10 s (no keep-alive). */
static void expiry(redisContext *context, const char *name) {
    check_string("hiredis set px", redisCommand(context, "SET %s:expiring v PX 1000", name), "OK");
    redisReply *reply = redisCommand(context, "PTTL %s:expiring", name);
    check_true("hiredis pttl counts down",
               reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0 && reply->integer <= 1000, reply);
    int present = 1;
    for (int waited = 0; present && waited < 10000; waited += 100) {
        usleep(100 * 1000);
        reply = redisCommand(context, "GET %s:expiring", name);
        present = reply == NULL || reply->type != REDIS_REPLY_NIL;
        freeReplyObject(reply);
    }
    check_integer("hiredis the key is gone once it expires", redisCommand(context, "EXISTS %s:expiring", name), 0);
}

/* A watch, as Redis names one: SUBSCRIBE to the key's keyspace channel on a connection of its
 * own; a SET by the other connection after the confirmation arrives as a message. */
static void subscription(redisContext *context, const char *host, int port, const char *name) {
    struct timeval timeout = {15, 0};
    redisContext *subscriber = redisConnectWithTimeout(host, port, timeout);
    if (subscriber == NULL || subscriber->err) {
        printf("FAILED connect the subscriber\n");
        exit(1);
    }
    redisSetTimeout(subscriber, timeout); /* a missing message fails, not hangs */
    redisReply *reply = redisCommand(subscriber, "SUBSCRIBE __keyspace@0__:%s:watched", name);
    check_true("hiredis subscribe is confirmed",
               reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
                   strcmp(reply->element[0]->str, "subscribe") == 0,
               reply);
    check_string("hiredis a later set", redisCommand(context, "SET %s:watched after", name), "OK");
    reply = NULL;
    char channel[160];
    snprintf(channel, sizeof channel, "__keyspace@0__:%s:watched", name);
    int seen = redisGetReply(subscriber, (void **)&reply) == REDIS_OK && reply->type == REDIS_REPLY_ARRAY &&
               reply->elements == 3 && strcmp(reply->element[0]->str, "message") == 0 &&
               strcmp(reply->element[1]->str, channel) == 0 && strcmp(reply->element[2]->str, "set") == 0;
    check_true("hiredis the subscription sees the later set", seen, reply);
    redisFree(subscriber);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT NAME\n", argv[0]);
        return 2;
    }
    const char *name = argv[3];
    struct timeval timeout = {15, 0};
    redisContext *context = redisConnectWithTimeout(argv[1], atoi(argv[2]), timeout);
    if (context == NULL || context->err) {
        printf("FAILED connect: %s\n", context ? context->errstr : "no context");
        return 1;
    }
    redisSetTimeout(context, timeout);
    char value[128];
    snprintf(value, sizeof value, "written by %s over RESP", name);
    check_string("hiredis set", redisCommand(context, "SET %s:redis %s", name, value), "OK");
    check_string("hiredis get", redisCommand(context, "GET %s:redis", name), value);
    check_string("hiredis reads the native client's write", redisCommand(context, "GET native:greeting"),
                 "from the native client");
    /* A binary-safe value: %b takes a pointer and a length. */
    const char binary[] = {'a', 0, 'b', '\r', '\n', (char)0xff};
    redisReply *reply = redisCommand(context, "SET %s:binary %b", name, binary, sizeof binary);
    check_string("hiredis set binary", reply, "OK");
    reply = redisCommand(context, "GET %s:binary", name);
    if (reply == NULL || reply->type != REDIS_REPLY_STRING || reply->len != sizeof binary ||
        memcmp(reply->str, binary, sizeof binary) != 0) {
        printf("FAILED hiredis get binary\n");
        return 1;
    }
    printf("ok hiredis get binary\n");
    freeReplyObject(reply);
    /* A pipeline: 100 SETs and a GET, written before any reply is read. */
    for (int i = 0; i < 100; i++) {
        redisAppendCommand(context, "SET %s:pipe:%d %d", name, i, i);
    }
    redisAppendCommand(context, "GET %s:pipe:99", name);
    for (int i = 0; i < 100; i++) {
        redisReply *set;
        if (redisGetReply(context, (void **)&set) != REDIS_OK) {
            printf("FAILED hiredis pipeline reply %d: %s\n", i, context->errstr);
            return 1;
        }
        freeReplyObject(set);
    }
    redisReply *last;
    redisGetReply(context, (void **)&last);
    check_string("hiredis pipeline", last, "99");
    check_integer("hiredis setnx", redisCommand(context, "SETNX %s:nx first", name), 1);
    check_integer("hiredis setnx again", redisCommand(context, "SETNX %s:nx second", name), 0);
    check_integer("hiredis incrby", redisCommand(context, "INCRBY %s:counter 5", name), 5);
    check_integer("hiredis exists", redisCommand(context, "EXISTS %s:redis %s:nothing", name, name), 1);
    expiry(context, name);
    subscription(context, argv[1], atoi(argv[2]), name);
    redisFree(context);
    printf("OK %s\n", name);
    return 0;
}
