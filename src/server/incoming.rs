//! The gRPC listener's stream of accepted connections, in place of tonic's
//! `TcpIncoming`: `TCP_NODELAY` on every socket, and accept errors that
//! cannot spin the process.
//!
//! When the process is out of file descriptors (`EMFILE`, `ENFILE`) or of
//! kernel memory (`ENOBUFS`, `ENOMEM`), the connection stays in the
//! listen backlog and the listener stays readable, so retrying at once
//! fails again at once: `TcpIncoming` burned a core that way while health
//! checks starved. Here such an error backs off (10 ms, doubling to 1 s,
//! reset by the next accepted connection), is counted in
//! `task_processor_grpc_accept_errors_total`, and is logged at most once a
//! second. An error that concerns one connection (it was aborted or reset
//! before it was accepted) is counted and skipped at once. Nothing here
//! ends the stream: a listener that fails for an unknown reason is retried
//! with the same back-off, never in a loop.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tracing::{debug, info, warn};

use crate::{errors::error_chain, metrics::Metrics};

/// The first wait after an accept failed for want of a resource...
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// ...doubling up to this: short enough to take connections again soon
/// after descriptors free up, long enough to cost nothing meanwhile.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most one warning per this period, however many accepts fail.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Connections accepted on the gRPC listener.
pub struct Incoming {
    listener: TcpListener,
    metrics: Metrics,
    backoff: Backoff,
    /// Set while waiting after a failed accept; boxed so `Incoming` is
    /// `Unpin`.
    waiting: Option<Pin<Box<Sleep>>>,
    refusals: Refusals,
}

impl Incoming {
    pub fn new(listener: TcpListener, metrics: Metrics) -> Self {
        Self {
            listener,
            metrics,
            backoff: Backoff::default(),
            waiting: None,
            refusals: Refusals::default(),
        }
    }
}

impl Stream for Incoming {
    /// Never an error: failures are handled here (see the module docs).
    type Item = Result<TcpStream, io::Error>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(waiting) = &mut this.waiting {
                ready!(waiting.as_mut().poll(context));
                this.waiting = None;
            }
            match ready!(this.listener.poll_accept(context)) {
                Ok((stream, _peer)) => {
                    this.backoff.reset();
                    if let Some(refused) = this.refusals.recovered() {
                        info!(refused, "accepting gRPC connections again");
                    }
                    // gRPC writes small frames it wants sent at once;
                    // without this, Nagle holds them for the peer's ACK.
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(error = %error, "cannot set TCP_NODELAY on a connection");
                    }
                    return Poll::Ready(Some(Ok(stream)));
                }
                Err(error) => {
                    let reason = AcceptError::of(&error);
                    this.metrics.accept_failed(reason.label());
                    if reason == AcceptError::Connection {
                        // That connection is gone; the next one may be fine.
                        debug!(error = %error, "a connection failed before it was accepted");
                        continue;
                    }
                    let retry_in = this.backoff.next_delay();
                    if let Some(refused) = this.refusals.refused(Instant::now()) {
                        warn!(
                            reason = reason.label(),
                            error = %error_chain(&error),
                            refused,
                            retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                            "cannot accept gRPC connections; backing off (raise the file \
                             descriptor limit, nofile, if this is EMFILE)"
                        );
                    }
                    this.waiting = Some(Box::pin(tokio::time::sleep(retry_in)));
                }
            }
        }
    }
}

/// Why an accept failed, as the metric's `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptError {
    /// `EMFILE`: the process has no file descriptor left.
    ProcessFiles,
    /// `ENFILE`: the system has none left.
    SystemFiles,
    /// `ENOBUFS`: no kernel buffer space.
    Buffers,
    /// `ENOMEM`: no kernel memory.
    Memory,
    /// The pending connection failed (aborted, reset, refused by a
    /// firewall, a network error Linux reports on `accept`): skip it.
    Connection,
    /// Anything else: backed off like a missing resource, so it cannot spin.
    Other,
}

impl AcceptError {
    fn of(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::EMFILE) => return Self::ProcessFiles,
            Some(libc::ENFILE) => return Self::SystemFiles,
            Some(libc::ENOBUFS) => return Self::Buffers,
            Some(libc::ENOMEM) => return Self::Memory,
            // accept(2): "Linux accept() passes already-pending network
            // errors on the new socket as an error code from accept()".
            Some(
                libc::EPROTO | libc::ENOPROTOOPT | libc::EHOSTDOWN | libc::EOPNOTSUPP | libc::EPERM,
            ) => return Self::Connection,
            _ => {}
        }
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown => Self::Connection,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::ProcessFiles => "emfile",
            Self::SystemFiles => "enfile",
            Self::Buffers => "enobufs",
            Self::Memory => "enomem",
            Self::Connection => "connection",
            Self::Other => "other",
        }
    }
}

/// The wait before the next accept after a failure.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_BACKOFF);
        delay
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// Counts refused accepts between warnings, so the log says how many
/// there were without a line for each.
#[derive(Debug, Default)]
struct Refusals {
    since_warning: u64,
    last_warning: Option<Instant>,
    /// Whether any accept was refused since the last success.
    refusing: bool,
}

impl Refusals {
    /// One more refusal at `now`; `Some(count)` when a warning is due,
    /// with how many were refused since the last one.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.refusing = true;
        self.since_warning += 1;
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.since_warning))
    }

    /// An accept succeeded: `Some(count)` of the refusals not yet logged,
    /// when it ends a period of refusals.
    fn recovered(&mut self) -> Option<u64> {
        if !std::mem::take(&mut self.refusing) {
            return None;
        }
        Some(std::mem::take(&mut self.since_warning))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST_BACKOFF);
    }

    #[test]
    fn refusals_are_warned_about_at_most_once_a_second_with_their_count() {
        let start = Instant::now();
        let mut refusals = Refusals::default();
        assert_eq!(refusals.refused(start), Some(1), "the first one at once");
        for millis in 1..=5 {
            assert_eq!(
                refusals.refused(start + Duration::from_millis(millis * 100)),
                None
            );
        }
        assert_eq!(
            refusals.refused(start + Duration::from_millis(1000)),
            Some(6),
            "every refusal since the last warning"
        );
        assert_eq!(refusals.refused(start + Duration::from_millis(1100)), None);
        assert_eq!(refusals.recovered(), Some(1), "the one not yet logged");
        assert_eq!(refusals.recovered(), None, "only once");
    }

    #[test]
    fn resource_errors_back_off_and_connection_errors_are_skipped() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            AcceptError::of(&os(libc::EMFILE)),
            AcceptError::ProcessFiles
        );
        assert_eq!(AcceptError::of(&os(libc::ENFILE)), AcceptError::SystemFiles);
        assert_eq!(AcceptError::of(&os(libc::ENOBUFS)), AcceptError::Buffers);
        assert_eq!(AcceptError::of(&os(libc::ENOMEM)), AcceptError::Memory);
        assert_eq!(
            AcceptError::of(&os(libc::ECONNABORTED)),
            AcceptError::Connection
        );
        assert_eq!(AcceptError::of(&os(libc::EPROTO)), AcceptError::Connection);
        assert_eq!(AcceptError::of(&os(libc::EBADF)), AcceptError::Other);
    }
}
