//! `quorum-sqlite`: a replicated SQLite on a Quorum cluster. `node` runs a node, `exec` and
//! `query` run SQL through a cluster, `bench` compares it with plain SQLite on the same disk.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quorum-sqlite",
    version,
    about = "A replicated SQLite: every SQL statement is a command of a Quorum cluster, applied \
             in the log's order to each replica's own SQLite database",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster until SIGTERM or SIGINT. Its databases (one per shard, one
    /// shard by default) live in DATA_DIR/sqlite/, next to the logs.
    ///
    /// Example, node 1 of three on one host:
    ///   quorum-sqlite node --id 1 --cluster-id 7 --listen 127.0.0.1:7000 \
    ///     --peers 1=127.0.0.1:7000,2=127.0.0.1:7010,3=127.0.0.1:7020 --data-dir /tmp/s1
    #[command(verbatim_doc_comment)]
    Node(Box<cli::node::NodeArgs>),
    /// Apply one SQL statement (INSERT, UPDATE, DELETE, CREATE…) on every replica, once, and
    /// print the rows it changed (and the rows of a RETURNING clause).
    ///
    /// Parameters bind to ?1, ?2… in order. A parameter is typed by its form: null, an
    /// integer (42), a real (1.5, 1e3), else text; or explicitly i:42, r:1.5, t:text, x:HEX
    /// (a blob), null.
    ///
    /// Example: quorum-sqlite exec --cluster 127.0.0.1:7000 \
    ///   "INSERT INTO users (name, age) VALUES (?1, ?2)" alice 42
    #[command(verbatim_doc_comment)]
    Exec(cli::sql::SqlArgs),
    /// Run one read-only statement (SELECT…) and print its rows as a table (or one JSON
    /// object per row with --json). Parameters as for exec.
    ///
    /// The shard's leader answers it from its database, linearizably (after one heartbeat
    /// round confirms it still leads); a query is never written to the log. A statement that
    /// would write is refused: send it with exec.
    ///
    /// Example: quorum-sqlite query --cluster 127.0.0.1:7000 "SELECT * FROM users WHERE age > ?1" 30
    #[command(verbatim_doc_comment)]
    Query(cli::sql::SqlArgs),
    /// Benchmark: replicated inserts (3 nodes, fsync) against plain SQLite on the same disk.
    ///
    /// Replicated: a 3-node cluster on loopback in this process, each node with its own
    /// temporary directory and database, fsync on; K clients insert small rows for S
    /// seconds, each waiting for its acknowledgement; then the three databases are compared
    /// (row count and a checksum of every table dumped in order). Plain: one SQLite file on
    /// the same disk, WAL mode, synchronous=FULL, one transaction per insert, K threads with
    /// their own connections, for the same time. Prints both and their ratio; exits 1 if the
    /// replicas differ.
    #[command(verbatim_doc_comment)]
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node logs its warnings; the bench's embedded nodes would bury its report under
    // theirs (a new directory's repair, every start), so it shows errors only. RUST_LOG
    // overrides both.
    let default_level = if matches!(cli.command, Command::Bench(_)) { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli.command {
        Command::Node(args) => cli::node::run(&args),
        Command::Exec(args) => cli::sql::run(&args, cli::sql::Mode::Exec),
        Command::Query(args) => cli::sql::run(&args, cli::sql::Mode::Query),
        Command::Bench(args) => cli::bench::run(&args),
    }
}
