//! A helper thread that runs flushes, so that the thread appending to the log never blocks on
//! the disk. The log allows one sync at a time, so the channels hold one each.

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::error::{Error, Result};
use crate::log::{PendingSync, SyncOutcome};

/// Runs [`PendingSync`]s on a thread of its own.
pub struct SyncThread {
    requests: Option<Sender<PendingSync>>,
    outcomes: Receiver<SyncOutcome>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    /// Starts the thread.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub fn spawn(name: &str) -> Result<SyncThread> {
        let (requests, incoming) = bounded::<PendingSync>(1);
        let (finished, outcomes) = bounded::<SyncOutcome>(1);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for pending in incoming {
                    if finished.send(pending.run()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| Error::Io { op: "spawn sync thread", path: name.into(), source })?;
        Ok(SyncThread { requests: Some(requests), outcomes, thread: Some(thread) })
    }

    /// Hands a flush to the thread. Returns at once.
    pub fn submit(&self, pending: PendingSync) {
        if let Some(requests) = &self.requests {
            // The thread only stops when this handle is dropped, so the send cannot fail.
            let _ = requests.send(pending);
        }
    }

    /// The outcome of the submitted flush, if it has finished.
    #[must_use]
    pub fn try_outcome(&self) -> Option<SyncOutcome> {
        self.outcomes.try_recv().ok()
    }

    /// Waits for the outcome of the submitted flush.
    #[must_use]
    pub fn wait_outcome(&self) -> Option<SyncOutcome> {
        self.outcomes.recv().ok()
    }

    /// The channel the outcomes arrive on, for a caller that selects over several.
    #[must_use]
    pub fn outcomes(&self) -> &Receiver<SyncOutcome> {
        &self.outcomes
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
