// A java.net.http.HttpClient client that keeps writing through a node's failure, as an
// application would (JDK 11 and later, no other library):
//
//   javac Writer.java && java Writer SECONDS PREFIX HOST:PORT [HOST:PORT ...]
//
// Puts PREFIX:0, PREFIX:1, ... with the body "value N" for SECONDS over the HTTP/JSON API. An
// error status (503 while a new leader is elected) retries the same key; a request that cannot
// connect, breaks or times out moves to the next address, then retries the same key. Prints
// each key whose PUT was acknowledged (200), one a line: every one of them must be readable
// afterwards.
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Writer {
    public static void main(String[] args) throws Exception {
        long deadline = System.nanoTime() + (long) (Double.parseDouble(args[0]) * 1e9);
        String prefix = args[1];
        int addresses = args.length - 2, at = 0, errors = 0;
        long n = 0;
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();
        while (System.nanoTime() < deadline) {
            String key = prefix + ":" + n;
            HttpRequest request = HttpRequest.newBuilder(URI.create("http://" + args[2 + at % addresses] + "/v1/kv/" + key))
                    // Above the node's own 10 s wait for a leader: a slow election answers 503.
                    .timeout(Duration.ofSeconds(12))
                    .PUT(HttpRequest.BodyPublishers.ofString("value " + n))
                    .build();
            try {
                if (client.send(request, HttpResponse.BodyHandlers.discarding()).statusCode() == 200) {
                    System.out.println(key); // System.out flushes at each line
                    n++;
                    continue;
                }
            } catch (IOException error) { // no connection, it broke or timed out: the next node
                at++;
            }
            errors++;
            Thread.sleep(50);
        }
        System.err.println("# " + n + " acknowledged, " + errors + " errors");
    }
}
