//! A TCP proxy in front of RabbitMQ that can go silent: `freeze` makes every connection it
//! carries stop forwarding without closing (a partition, a stalled VM, a firewall that lost
//! its state), and holds new ones the same way; `heal` lets new connections through again,
//! while the frozen ones stay frozen, open and silent, until the test ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SilentProxy {
    pub port: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    next: AtomicU64,
    /// Connections numbered below this are frozen for good.
    cutoff: AtomicU64,
    /// While set, new connections are held without being forwarded.
    frozen: AtomicBool,
}

impl State {
    fn frozen(&self, id: u64) -> bool {
        id < self.cutoff.load(Ordering::SeqCst)
    }
}

impl SilentProxy {
    /// Listens on a free loopback port and forwards to `upstream` (host:port).
    ///
    /// On a thread and runtime of its own: a test that blocks its own thread (waiting for a
    /// process to exit, say) must not freeze the links that the test did not freeze. On the
    /// test's runtime, b's drain at SIGTERM could not send its acks, and what it had delivered
    /// went back to its outbox as a second copy.
    pub fn start(upstream: &str) -> SilentProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("proxy socket");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let (upstream, shared) = (upstream.to_string(), state.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(serve(listener, upstream, shared));
        });
        SilentProxy { port, state }
    }

    /// Every connection now carried stops forwarding; new ones are held.
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.cutoff.store(next, Ordering::SeqCst);
    }

    /// New connections go through again; the frozen ones stay as they are.
    pub fn heal(&self) {
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.cutoff.store(next, Ordering::SeqCst);
        self.state.frozen.store(false, Ordering::SeqCst);
    }
}

async fn serve(listener: std::net::TcpListener, upstream: String, state: Arc<State>) {
    let listener = TcpListener::from_std(listener).expect("proxy listener");
    while let Ok((client, _)) = listener.accept().await {
        let id = state.next.fetch_add(1, Ordering::SeqCst);
        let (upstream, state) = (upstream.clone(), state.clone());
        tokio::spawn(async move {
            if state.frozen.load(Ordering::SeqCst) {
                // Held open, never answered.
                let _held = &client;
                std::future::pending::<()>().await;
            }
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pump(client_read, server_write, id, state.clone());
            let down = pump(server_read, client_write, id, state);
            futures::future::join(up, down).await;
        });
    }
}

/// Copies one direction until either side closes; once the connection is frozen, it reads
/// no more and writes nothing, holding both sockets open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    state: Arc<State>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if state.frozen(id) {
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.frozen(id) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
