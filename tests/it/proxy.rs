//! A TCP proxy between a server and its PostgreSQL, to take the network
//! away under a running server and give it back: a fake of the network,
//! not of the database.
//!
//! Its tasks run on the test's runtime: tests that start a server process
//! (which blocks the test thread until it serves) use a multi-thread one.

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    /// Bytes flow both ways.
    Open,
    /// Every connection is closed, and new ones are closed at once, as
    /// when the database is down.
    Cut,
    /// Nothing flows and nothing is closed, as when a network drops every
    /// packet: callers hear nothing at all.
    Silent,
}

pub struct Proxy {
    address: SocketAddr,
    network: watch::Sender<Network>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bound");
        let address = listener.local_addr().expect("proxy address");
        let (network, watching) = watch::channel(Network::Open);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, watching.clone()));
            }
        });
        Self {
            address,
            network,
            accepting,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every connection, and every new one at once.
    pub fn cut(&self) {
        self.network.send_replace(Network::Cut);
    }

    /// Stops every byte, closing nothing.
    pub fn silence(&self) {
        self.network.send_replace(Network::Silent);
    }

    /// Lets new connections through again. Connections from before a cut
    /// or a silence stay dead, as TCP connections across an outage do.
    pub fn restore(&self) {
        self.network.send_replace(Network::Open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.network.send_replace(Network::Cut);
    }
}

/// One connection: forwarded while the network is open, then closed
/// (cut) or held silent until the network changes again, then closed.
async fn forward(mut client: TcpStream, target: SocketAddr, mut network: watch::Receiver<Network>) {
    if *network.borrow_and_update() != Network::Open {
        hold_unless_cut(network).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = until_not_open(&mut network) => hold_unless_cut(network).await,
    }
}

async fn until_not_open(network: &mut watch::Receiver<Network>) {
    while *network.borrow_and_update() == Network::Open {
        if network.changed().await.is_err() {
            return;
        }
    }
}

/// Silent: waits (holding the sockets the caller owns) until the network
/// changes. Cut: returns at once, closing them.
async fn hold_unless_cut(mut network: watch::Receiver<Network>) {
    while *network.borrow_and_update() == Network::Silent {
        if network.changed().await.is_err() {
            return;
        }
    }
}
