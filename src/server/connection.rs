//! One accepted connection of the gRPC port, plaintext or TLS, as tonic
//! serves it: the bytes both ways, and the [`PeerInfo`] every request on
//! it carries.
//!
//! A plaintext connection is the `TcpStream` itself, with its vectored
//! writes, so the default (no TLS) serves as before.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::auth::{PeerInfo, certificate_subject};

pub struct Connection {
    stream: Stream,
    peer: PeerInfo,
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
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
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
