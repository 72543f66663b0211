/* Quorum from C through hiredis, the Redis protocol's C client, unchanged.
 *
 *   cc kv_hiredis.c -lhiredis -o kv_hiredis && ./kv_hiredis HOST PORT NAME
 *
 * Sets NAME:hiredis, reads it back and a key another client wrote (native:greeting),
 * pipelines 100 SETs and a GET, runs SET NX and INCR; prints one line per check, exits 1 at
 * the first wrong answer. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    redisFree(context);
    printf("OK %s\n", name);
    return 0;
}
