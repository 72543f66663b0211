// Quorum from Java through java.net.http.HttpClient (JDK 11 and later, no other library).
//
//   java Kv.java HTTP_HOST:PORT NAME
//
// Puts NAME:http, gets it back as JSON, reads a key another client wrote, checks a missing
// key's 404 and a compare-and-set. Then the coordination API: a key living by a lease
// disappears when the lease expires; a lock whose holder's lease expires passes to another
// lease with a larger fencing token, and a fenced write with the old token is refused (412); a
// watch started from an earlier revision sees a later put. Prints one line per check, exits 1
// at the first wrong answer.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Kv {
    static void check(String what, boolean good, String got) {
        if (!good) {
            System.out.println("FAILED " + what + ": got " + got);
            System.exit(1);
        }
        System.out.println("ok " + what);
    }

    static HttpClient client;
    static String base;

    // One request; a body that starts with '{' is sent as JSON, null sends none.
    static HttpResponse<String> call(String method, String path, String body) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + path)).timeout(Duration.ofSeconds(15));
        if (body != null && body.startsWith("{")) request.header("Content-Type", "application/json");
        request.method(method, body == null ? HttpRequest.BodyPublishers.noBody() : HttpRequest.BodyPublishers.ofString(body));
        return client.send(request.build(), HttpResponse.BodyHandlers.ofString());
    }

    // The number FIELD of a JSON body (64-bit: revisions, lease ids, tokens), 0 if absent.
    static long number(String body, String field) {
        Matcher m = Pattern.compile("\"" + field + "\":([0-9]+)").matcher(body);
        return m.find() ? Long.parseUnsignedLong(m.group(1)) : 0;
    }

    // Grants a lease of ttlMs; its id.
    static long grantLease(int ttlMs) throws Exception {
        HttpResponse<String> response = call("POST", "/leases", "{\"ttl_ms\":" + ttlMs + "}");
        check("HttpClient grants a lease", response.statusCode() == 200, response.body());
        return number(response.body(), "id");
    }

    // Takes lock (its path, percent-encoded) for lease, waiting up to 10 s; its fencing token.
    static long takeLock(String lock, long lease) throws Exception {
        HttpResponse<String> response = call("POST", "/locks/" + lock, "{\"lease\":" + lease + ",\"timeout_ms\":10000}");
        check("HttpClient takes the lock", response.statusCode() == 200, response.body());
        return number(response.body(), "token");
    }

    // (1) A key living by a lease of 2 s is gone once the lease expires (no keep-alive).
    static void leaseExpires(String name) throws Exception {
        long lease = grantLease(2000);
        HttpResponse<String> response = call("PUT", "/kv/" + name + "-leased?lease=" + lease, "lives by a lease");
        check("HttpClient put with a lease", response.statusCode() == 200, response.body());
        response = call("GET", "/kv/" + name + "-leased", null);
        check("HttpClient reads the leased key",
                response.statusCode() == 200 && response.body().contains("\"value\":\"lives by a lease\""), response.body());
        for (int waited = 0; response.statusCode() == 200 && waited < 10000; waited += 200) {
            Thread.sleep(200);
            response = call("GET", "/kv/" + name + "-leased", null);
        }
        check("HttpClient the leased key is gone once the lease expires", response.statusCode() == 404, response.body());
    }

    // (2) A lock and fenced writes: A's lease expires, B takes the lock with a larger token, and
    // A's late write with its old token is refused. The lock and the key share the hash tag
    // {NAME} (percent-encoded: %7B, %7D), so they lie on one shard.
    static void lockAndFence(String name) throws Exception {
        String lock = "%7B" + name + "%7D-lock", fenced = "/kv/%7B" + name + "%7D-fenced?lock=" + lock + "&token=";
        long a = grantLease(1500);
        long t1 = takeLock(lock, a);
        HttpResponse<String> response = call("PUT", fenced + t1, "by A");
        check("HttpClient fenced write with the holder's token", response.statusCode() == 200, response.body());
        // A is not kept alive: B waits in line until A's lease expires.
        long b = grantLease(60000);
        long t2 = takeLock(lock, b);
        check("HttpClient the next holder's token is larger", Long.compareUnsigned(t2, t1) > 0, t1 + " then " + t2);
        response = call("PUT", fenced + t1, "late A");
        check("HttpClient fenced write with the old token is 412",
                response.statusCode() == 412 && response.body().contains("fence_failed"), response.body());
        response = call("PUT", fenced + t2, "by B");
        check("HttpClient fenced write with the new token", response.statusCode() == 200, response.body());
        response = call("DELETE", "/locks/" + lock + "?lease=" + b, null);
        check("HttpClient releases the lock", response.body().contains("\"released\":true"), response.body());
        call("DELETE", "/leases/" + b, null);
    }

    // (3) A watch resumes from a revision: started after a put, from the revision before it, it
    // still gets that put; each change is one JSON line.
    static void watchFromRevision(String name) throws Exception {
        String key = "/kv/" + name + "-watched";
        call("PUT", key, "before");
        HttpResponse<String> response = call("GET", key + "?meta=true", null);
        long before = number(response.body(), "mod_revision");
        check("HttpClient reads the put's revision", response.statusCode() == 200 && before != 0, response.body());
        response = call("PUT", key, "after");
        check("HttpClient a later put", response.statusCode() == 200, response.body());
        response = call("GET", "/watch?key=" + name + "-watched&revision=" + (before + 1) + "&limit=1&timeout_ms=5000", null);
        String event = response.body().split("\n", 2)[0];
        check("HttpClient the watch sees the later put",
                response.statusCode() == 200 && event.contains("\"type\":\"put\"") && event.contains("\"value\":\"after\"")
                        && Long.compareUnsigned(number(event, "revision"), before) > 0,
                response.body());
    }

    public static void main(String[] args) throws Exception {
        base = "http://" + args[0] + "/v1";
        String name = args[1];
        client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        String value = "written by " + name + " over HTTP";
        HttpResponse<String> response = client.send(
                HttpRequest.newBuilder(URI.create(base + "/kv/" + name + ":http"))
                        .timeout(Duration.ofSeconds(15))
                        .PUT(HttpRequest.BodyPublishers.ofString(value))
                        .build(),
                HttpResponse.BodyHandlers.ofString());
        check("HttpClient put", response.statusCode() == 200, response.body());
        response = client.send(
                HttpRequest.newBuilder(URI.create(base + "/kv/" + name + ":http")).timeout(Duration.ofSeconds(15)).build(),
                HttpResponse.BodyHandlers.ofString());
        check("HttpClient get", response.statusCode() == 200 && response.body().contains("\"value\":\"" + value + "\""),
                response.body());
        response = client.send(
                HttpRequest.newBuilder(URI.create(base + "/kv/native:greeting")).timeout(Duration.ofSeconds(15)).build(),
                HttpResponse.BodyHandlers.ofString());
        check("HttpClient reads the native client's write",
                response.body().contains("\"value\":\"from the native client\""), response.body());
        response = client.send(
                HttpRequest.newBuilder(URI.create(base + "/kv/" + name + ":never-written")).timeout(Duration.ofSeconds(15)).build(),
                HttpResponse.BodyHandlers.ofString());
        check("HttpClient missing key is 404", response.statusCode() == 404 && response.body().contains("key_not_found"),
                response.body());
        response = client.send(
                HttpRequest.newBuilder(URI.create(base + "/cas/" + name + ":cas"))
                        .timeout(Duration.ofSeconds(15))
                        .header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString("{\"expected\":null,\"value\":\"one\"}"))
                        .build(),
                HttpResponse.BodyHandlers.ofString());
        check("HttpClient cas", response.statusCode() == 200 && response.body().contains("\"succeeded\":true"),
                response.body());
        leaseExpires(name);
        lockAndFence(name);
        watchFromRevision(name);
        System.out.println("OK " + name);
    }
}
