//! Broker-wide admission limits (issue 13): what one node accepts at once, so that a burst of
//! producers, readers or connections cannot grow its memory without bound or starve the log's
//! fsyncs.
//!
//! | limit | flag | beyond it |
//! |---|---|---|
//! | record bytes of produce batches accepted and not yet answered | `--max-inflight-produce-bytes` | the batch is refused with `RESOURCE_EXHAUSTED` (retry later; nothing stored) |
//! | `Fetch` calls reading the log at once | `--max-concurrent-reads` | the call waits up to [`READ_QUEUE_WAIT`] for a turn, then `RESOURCE_EXHAUSTED` |
//! | client connections on the gRPC port | `--max-connections` | the connection is closed at once (the client sees a transport error, as from a broker that is down, and tries another broker); counted in `txpipe_broker_connections_rejected_total` |
//!
//! Together with the per-call bounds (at most `MAX_PRODUCE_IN_FLIGHT` batches per Produce call,
//! consumer windows at most [`crate::delivery::MAX_WINDOW`]) these also bound each stream's
//! proposer queue: everything in it is a produce batch holding produce-byte permits, a
//! registration, or the delivery task's acks and attempts, which follow the windows.
//!
//! Reads run on tokio's blocking pool like the group commit's fsyncs; bounding them keeps a
//! flood of `Fetch` calls from occupying the pool (512 threads) that the fsyncs need.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Longest wait of a `Fetch` for a read slot before `RESOURCE_EXHAUSTED`.
pub const READ_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The broker's admission limits (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    produce_bytes: Arc<Semaphore>,
    produce_bytes_max: usize,
    reads: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Limits {
    /// Limits of `produce_bytes` in-flight produce bytes, `reads` concurrent log reads and
    /// `connections` client connections (each at least 1).
    pub fn new(produce_bytes: usize, reads: usize, connections: usize) -> Self {
        let produce_bytes = produce_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            produce_bytes: Arc::new(Semaphore::new(produce_bytes)),
            produce_bytes_max: produce_bytes,
            reads: Arc::new(Semaphore::new(reads.max(1))),
            connections: Arc::new(Semaphore::new(connections.max(1))),
        }
    }

    /// Admits a produce batch of `bytes` record bytes, or refuses it at once.
    ///
    /// Errors: [`Error::Overloaded`] when the in-flight budget is used up.
    pub fn admit_produce(&self, stream: &str, bytes: usize) -> Result<OwnedSemaphorePermit> {
        let n = bytes.clamp(1, self.produce_bytes_max) as u32;
        Arc::clone(&self.produce_bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| {
                Error::Overloaded(format!(
                    "produce to {stream:?}: this broker has {} bytes of produce batches in flight (--max-inflight-produce-bytes); retry later",
                    self.produce_bytes_max
                ))
            })
    }

    /// Waits for a log read slot, at most [`READ_QUEUE_WAIT`].
    ///
    /// Errors: [`Error::Overloaded`] when no slot freed up in time.
    pub async fn admit_read(&self, stream: &str) -> Result<OwnedSemaphorePermit> {
        match tokio::time::timeout(READ_QUEUE_WAIT, Arc::clone(&self.reads).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Error::Overloaded(format!(
                "fetch from {stream:?}: every read slot of this broker stayed busy for {} ms (--max-concurrent-reads); retry later",
                READ_QUEUE_WAIT.as_millis()
            ))),
        }
    }

    /// A connection slot, when one is free.
    pub fn admit_connection(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// Produce bytes in flight now.
    pub fn produce_bytes_in_flight(&self) -> usize {
        self.produce_bytes_max - self.produce_bytes.available_permits()
    }
}

/// A client connection holding its slot of [`Limits::admit_connection`] until it closes.
#[derive(Debug)]
pub struct Admitted<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Admitted<T> {
    /// `inner` with its connection slot.
    pub fn new(inner: T, slot: OwnedSemaphorePermit) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_bytes_are_admitted_up_to_the_budget_and_given_back() {
        let l = Limits::new(1000, 1, 1);
        let a = l.admit_produce("s", 600).unwrap();
        assert_eq!(l.produce_bytes_in_flight(), 600);
        let e = l.admit_produce("s", 500).unwrap_err();
        assert!(matches!(e, Error::Overloaded(_)), "{e}");
        assert_eq!(
            tonic::Status::from(e).code(),
            tonic::Code::ResourceExhausted
        );
        drop(a);
        assert_eq!(l.produce_bytes_in_flight(), 0);
        // A batch larger than the whole budget still passes alone.
        let b = l.admit_produce("s", 5000).unwrap();
        assert!(l.admit_produce("s", 1).is_err());
        drop(b);
    }

    #[tokio::test]
    async fn reads_wait_for_a_slot_then_give_up() {
        let l = Limits::new(1, 2, 1);
        let a = l.admit_read("s").await.unwrap();
        let _b = l.admit_read("s").await.unwrap();
        let waiting = {
            let l = l.clone();
            tokio::spawn(async move { l.admit_read("s").await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        drop(a);
        waiting.await.unwrap().expect("a freed slot is taken");
        let _c = l.admit_read("s").await.unwrap();
        let e = l.admit_read("s").await.unwrap_err();
        assert!(e.to_string().contains("--max-concurrent-reads"), "{e}");
    }

    #[test]
    fn connections_beyond_the_limit_get_no_slot() {
        let l = Limits::new(1, 1, 2);
        let a = l.admit_connection().unwrap();
        let _b = l.admit_connection().unwrap();
        assert!(l.admit_connection().is_none());
        drop(a);
        assert!(l.admit_connection().is_some());
    }
}
