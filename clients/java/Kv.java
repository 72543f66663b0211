// Quorum from Java through java.net.http.HttpClient (JDK 11 and later, no other library).
//
//   java Kv.java HTTP_HOST:PORT NAME
//
// Puts NAME:http, gets it back as JSON, reads a key another client wrote, checks a missing
// key's 404 and a compare-and-set; prints one line per check, exits 1 at the first wrong
// answer.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Kv {
    static void check(String what, boolean good, String got) {
        if (!good) {
            System.out.println("FAILED " + what + ": got " + got);
            System.exit(1);
        }
        System.out.println("ok " + what);
    }

    public static void main(String[] args) throws Exception {
        String base = "http://" + args[0] + "/v1";
        String name = args[1];
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
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
        System.out.println("OK " + name);
    }
}
