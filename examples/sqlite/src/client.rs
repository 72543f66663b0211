//! Executing and querying a replicated database through a cluster: statements are checked
//! for determinism before they are proposed, and replies decoded into typed results.

use std::time::Duration;

use quorum::ClusterId;
use quorum::client::{Client, ClientError, ClientOptions};

use crate::command::{Statement, Value};
use crate::determinism::check_statement;
use crate::reply::{Outcome, StatementError, decode_reply};

/// Why an execution or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlClientError {
    /// The statement was refused or failed: the same on every replica (for a command: it
    /// changed nothing).
    #[error("{0}")]
    Statement(#[from] StatementError),
    /// The cluster could not be reached or did not answer.
    #[error("{0}")]
    Cluster(#[from] ClientError),
    /// The reply did not decode.
    #[error("malformed reply: {0}")]
    BadReply(String),
    /// The shard does not exist in this cluster.
    #[error("shard {shard} does not exist: the cluster has {shards}")]
    NoSuchShard {
        /// The shard asked for.
        shard: u16,
        /// Shards in the cluster.
        shards: u16,
    },
}

/// A connection to a replicated database's cluster. Shareable between threads.
pub struct SqlClient {
    client: Client,
}

impl SqlClient {
    /// Connects through any of `seeds` (`HOST:PORT` of members).
    ///
    /// # Errors
    /// No seed answered, or the cluster refused us.
    pub fn connect(
        seeds: &[String],
        cluster_id: u64,
        request_timeout: Duration,
    ) -> Result<SqlClient, SqlClientError> {
        let options = ClientOptions {
            cluster_id: ClusterId(cluster_id),
            request_timeout,
            ..ClientOptions::default()
        };
        Ok(SqlClient { client: Client::connect(seeds, options)? })
    }

    /// A client over an existing Quorum client (an embedded node's).
    #[must_use]
    pub fn from_client(client: Client) -> SqlClient {
        SqlClient { client }
    }

    /// Shards in the cluster: each is a database of its own.
    #[must_use]
    pub fn shards(&self) -> u16 {
        self.client.shards()
    }

    fn shard_exists(&self, shard: u16) -> Result<(), SqlClientError> {
        let shards = self.client.shards();
        if shard >= shards {
            return Err(SqlClientError::NoSuchShard { shard, shards });
        }
        Ok(())
    }

    /// Applies one statement on shard `shard`'s database, once, on every replica.
    ///
    /// # Errors
    /// Refused before it was proposed (non-deterministic), failed in SQLite, or the cluster
    /// did not answer (then it may or may not have been applied).
    pub fn execute(
        &self,
        shard: u16,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Outcome, SqlClientError> {
        self.shard_exists(shard)?;
        check_statement(sql, &params)?;
        let command = Statement::new(sql, params).encode();
        let response = self.client.call(shard, &command)?;
        decode(&response.body)
    }

    /// Runs a read-only statement on shard `shard`'s database. Linearizable: the leader
    /// answers it once a heartbeat round confirmed it still leads and its database applied
    /// every command committed before the query arrived (the read index); the query is never
    /// written to the log.
    ///
    /// # Errors
    /// As [`SqlClient::execute`]; also a statement that would write.
    pub fn query(
        &self,
        shard: u16,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Outcome, SqlClientError> {
        self.shard_exists(shard)?;
        check_statement(sql, &params)?;
        let request = Statement::new(sql, params).encode();
        let response = self.client.query(shard, &request)?;
        decode(&response.body)
    }
}

fn decode(body: &[u8]) -> Result<Outcome, SqlClientError> {
    let reply = decode_reply(body).map_err(|error| SqlClientError::BadReply(error.to_string()))?;
    Ok(reply?)
}
