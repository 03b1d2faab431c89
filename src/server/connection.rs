//! One accepted connection of the gRPC port, plaintext or TLS, as tonic
//! serves it: the bytes both ways, and the [`PeerInfo`] every request on
//! it carries.
//!
//! A plaintext connection is the `TcpStream` itself, with its vectored
//! writes, so the default (no TLS) serves as before.
//!
//! A plaintext client must send its first bytes within
//! [`FIRST_BYTES_TIMEOUT`], as a TLS one must finish its handshake: a
//! connection that never says anything would otherwise hold its socket
//! forever (HTTP/1.1's header timeout and HTTP/2's keepalive pings start
//! only once the protocol is known, from those first bytes).

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::auth::{PeerInfo, certificate_subject};

/// How long a plaintext client may stay silent after connecting: as long
/// as a TLS client may take over its handshake.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Connection {
    stream: Stream,
    peer: PeerInfo,
    /// Until the client's first bytes arrive: when it must have sent them.
    /// Boxed so that it costs a pointer once they have.
    first_bytes_due: Option<Pin<Box<Sleep>>>,
}

enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls connection is about a kilobyte and a half, a
    /// `TcpStream` a few words.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    pub fn plain(stream: TcpStream) -> Self {
        let peer = PeerInfo::of_tcp(stream.connect_info(), None);
        Self {
            stream: Stream::Plain(stream),
            peer,
            first_bytes_due: Some(Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT))),
        }
    }

    /// A connection whose handshake is done: with mTLS, the client's
    /// verified certificate names its identity.
    pub fn tls(stream: TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let certificate_subject: Option<Arc<str>> = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| certificate_subject(leaf.as_ref()));
        let peer = PeerInfo::of_tcp(tcp.connect_info(), certificate_subject);
        Self {
            stream: Stream::Tls(Box::new(stream)),
            peer,
            // The handshake had its own deadline, and it needed bytes.
            first_bytes_due: None,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.stream {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        };
        if let Some(due) = &mut this.first_bytes_due {
            match read {
                // Bytes, the end of the stream or an error: the client
                // said something (or is gone), and the protocol's own
                // timeouts take over.
                Poll::Ready(_) => this.first_bytes_due = None,
                Poll::Pending if due.as_mut().poll(context).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing after connecting",
                    )));
                }
                Poll::Pending => {}
            }
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}
