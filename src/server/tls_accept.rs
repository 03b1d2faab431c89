//! The gRPC port's connections: plaintext as accepted, or TLS after a
//! handshake that runs beside the accept loop.
//!
//! tonic cannot terminate TLS here: it would then serve HTTP/2 only, and
//! the port also serves HTTP/1.1 (REST, gRPC-Web, curl). So the server
//! does the handshake (ALPN `h2` and `http/1.1`), and hands tonic the
//! decrypted stream. Each handshake runs in its own task, so a slow or
//! silent client holds up no other; at most [`MAX_HANDSHAKES`] run at
//! once, each for at most [`HANDSHAKE_TIMEOUT`].

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tracing::debug;

use super::{connection::Connection, incoming::Incoming};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes may be under way at once; past it, the accept loop
/// waits (connections queue in the listen backlog), so a flood of silent
/// clients costs bounded memory.
const MAX_HANDSHAKES: usize = 512;

/// Finished handshakes waiting for tonic to take them.
const READY_CONNECTIONS: usize = 64;

/// The port's connections as tonic takes them.
pub enum Connections {
    Plain(Incoming),
    Tls(ReceiverStream<Connection>),
}

impl Connections {
    /// Plaintext, or with `tls`, TLS only.
    pub fn new(incoming: Incoming, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        match tls {
            None => Self::Plain(incoming),
            Some(config) => {
                let (ready, taken) = mpsc::channel(READY_CONNECTIONS);
                tokio::spawn(accept_tls(incoming, TlsAcceptor::from(config), ready));
                Self::Tls(ReceiverStream::new(taken))
            }
        }
    }
}

impl Stream for Connections {
    /// Never an error: the accept loop handles its failures.
    type Item = Result<Connection, io::Error>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Plain(incoming) => Pin::new(incoming)
                .poll_next(context)
                .map(|next| next.map(|accepted| accepted.map(Connection::plain))),
            Self::Tls(handshaken) => Pin::new(handshaken)
                .poll_next(context)
                .map(|next| next.map(Ok)),
        }
    }
}

/// Accepts connections and starts their handshakes until tonic stops
/// taking connections (the receiver is dropped at shutdown).
async fn accept_tls(
    mut incoming: Incoming,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Connection>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            () = ready.closed() => return,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let stream = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                // `Incoming` never ends nor fails; should it, stop.
                Some(Err(_)) | None => return,
            },
            () = ready.closed() => return,
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    // A closed receiver means the server is stopping.
                    let _ = ready.send(Connection::tls(stream)).await;
                }
                // A client that speaks plaintext, does not trust our
                // certificate or has no client certificate: its own
                // business, not the operator's, so debug.
                Ok(Err(error)) => debug!(error = %error, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        });
    }
}
