//! The front ends: an HTTP/JSON API (docs/http.md) and the Redis protocol (docs/redis.md),
//! so that curl, any HTTP library and any language's Redis client talk to a node unchanged.
//!
//! They sit one layer above [`crate::client`] and below the binary: each runs on a small tokio
//! runtime of its own threads, beside the shards' pinned glommio executors, and reaches the
//! cluster through one [`Client`](crate::client::Client) connected to its own node's client
//! listener and to its peers (the [`Gateway`]). So any node answers any request: the client
//! routes each key to its shard's leader, follows redirects and retries under the same request
//! ids, exactly as for a native client, and every write is durable on a majority before the
//! front end replies. The price is one loopback hop per request (BENCHMARKS.md measures it).
//!
//! Everything a front end reads from its sockets is input: bodies and bulk strings are capped
//! at what a command of the node can hold, parsers refuse what they cannot read with a reply
//! naming the reason, connections are counted and bounded; no input panics a front end.

mod coord;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod http;
mod resp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use coord::FrontWatch;
pub use gateway::{Access, Gateway, RequestError, Submitted};

use crate::client::ClientError;
use crate::core::ClusterId;

/// Connections the metrics listener serves at once: a few scrapers and probes.
const METRICS_CONNECTIONS_MAX: usize = 64;

/// How the front ends of one node are set up.
#[derive(Clone, Debug)]
pub struct FrontConfig {
    /// The node's own client address first (its `--listen`), then its peers': the gateway's
    /// client starts there and learns the rest.
    pub seeds: Vec<String>,
    /// The cluster's id.
    pub cluster_id: ClusterId,
    /// Where to serve HTTP/JSON, if at all.
    pub http_listen: Option<String>,
    /// Where to serve the Redis protocol, if at all.
    pub redis_listen: Option<String>,
    /// Where to serve `/metrics`, `/ready` and `/health` alone (docs/operations.md), if at
    /// all. Needs [`FrontConfig::probe`].
    pub metrics_listen: Option<String>,
    /// The node's metrics and readiness: served on the metrics listener, and on the HTTP
    /// port beside the API.
    pub probe: Option<Arc<dyn Probe>>,
    /// The node's largest batch (`--batch-bytes-max`): a command must fit in one, so values,
    /// bodies and bulk strings are capped by it.
    pub batch_bytes_max: usize,
    /// How long one request may wait for the cluster (a leader, a majority) before it fails
    /// with a "try again" error.
    pub request_timeout: Duration,
    /// Connections each front end serves at once; more are refused with a reason.
    pub connections_max: usize,
    /// Threads of the front ends' runtime.
    pub threads: usize,
}

impl FrontConfig {
    /// A configuration with the defaults (10 s requests, 4096 connections per front end, two
    /// threads) and no listener yet.
    #[must_use]
    pub fn new(seeds: Vec<String>, cluster_id: ClusterId, batch_bytes_max: usize) -> FrontConfig {
        FrontConfig {
            seeds,
            cluster_id,
            http_listen: None,
            redis_listen: None,
            metrics_listen: None,
            probe: None,
            batch_bytes_max,
            request_timeout: Duration::from_secs(10),
            connections_max: 4096,
            threads: 2,
        }
    }
}

/// What a node tells its operator's endpoints, read at each request (`GET /metrics`,
/// `GET /ready`): [`crate::runtime::metrics::NodeProbe`] for a node.
pub trait Probe: std::fmt::Debug + Send + Sync + 'static {
    /// Every metric, in the Prometheus text format (version 0.0.4).
    fn metrics_text(&self) -> String;

    /// Why the node is not ready, as `(shard, reason)`; empty when it is.
    fn not_ready(&self) -> Vec<(u16, String)>;
}

/// Why the front ends could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {address}: {source}")]
    Bind {
        /// "HTTP", "Redis" or "metrics".
        what: &'static str,
        /// The address given.
        address: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The runtime's threads could not start.
    #[error("cannot start the front ends' runtime: {0}")]
    Runtime(std::io::Error),
    /// The gateway's client could not reach the node.
    #[error("the front ends cannot reach their node: {0}")]
    Client(#[from] ClientError),
    /// A metrics listener without the node's probe to serve.
    #[error("a metrics listener needs the node's probe (FrontConfig::probe)")]
    NoProbe,
}

/// A node's running front ends; [`FrontEnds::stop`] ends them.
pub struct FrontEnds {
    runtime: Option<tokio::runtime::Runtime>,
    http: Option<SocketAddr>,
    redis: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

impl FrontEnds {
    /// Connects the gateway to the node (if HTTP or Redis is served) and starts listening
    /// where `config` says.
    ///
    /// # Errors
    /// A listener that cannot be bound, a runtime that cannot start, a node that does not
    /// answer, a metrics listener without a probe.
    pub fn start(config: &FrontConfig) -> Result<FrontEnds, FrontError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("quorum-front")
            .enable_io()
            .enable_time()
            .build()
            .map_err(FrontError::Runtime)?;
        let bind = |what: &'static str, address: &str| -> Result<_, FrontError> {
            let error = |source| FrontError::Bind { what, address: address.to_string(), source };
            let listener = std::net::TcpListener::bind(address).map_err(error)?;
            listener.set_nonblocking(true).map_err(error)?;
            let local = listener.local_addr().map_err(error)?;
            let _entered = runtime.enter();
            Ok((tokio::net::TcpListener::from_std(listener).map_err(error)?, local))
        };
        let mut fronts = FrontEnds { runtime: None, http: None, redis: None, metrics: None };
        if let Some(address) = &config.metrics_listen {
            // First, and without the gateway: the operator's endpoints answer even while the
            // node cannot serve clients (that is when /ready says why).
            let probe = config.probe.clone().ok_or(FrontError::NoProbe)?;
            let (listener, local) = bind("metrics", address)?;
            let routes = http::probe_routes(probe);
            runtime.spawn(http::serve(listener, routes, METRICS_CONNECTIONS_MAX));
            tracing::info!(address = %local, "serving /metrics, /ready and /health");
            fronts.metrics = Some(local);
        }
        if config.http_listen.is_some() || config.redis_listen.is_some() {
            let gateway = Arc::new(Gateway::connect(config)?);
            if let Some(address) = &config.http_listen {
                let (listener, local) = bind("HTTP", address)?;
                let routes = http::api_routes(gateway.clone(), config.probe.clone());
                runtime.spawn(http::serve(listener, routes, config.connections_max));
                tracing::info!(address = %local, "serving HTTP/JSON");
                fronts.http = Some(local);
            }
            if let Some(address) = &config.redis_listen {
                let (listener, local) = bind("Redis", address)?;
                runtime.spawn(resp::serve(listener, gateway.clone(), config.connections_max));
                tracing::info!(address = %local, "serving the Redis protocol");
                fronts.redis = Some(local);
            }
        }
        fronts.runtime = Some(runtime);
        Ok(fronts)
    }

    /// Where HTTP is served, if it is.
    #[must_use]
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Where the Redis protocol is served, if it is.
    #[must_use]
    pub fn redis_address(&self) -> Option<SocketAddr> {
        self.redis
    }

    /// Where `/metrics`, `/ready` and `/health` are served alone, if they are.
    #[must_use]
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops serving: listeners close, open connections are dropped (a request in flight may
    /// still be applied by the cluster, unanswered).
    pub fn stop(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for FrontEnds {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
