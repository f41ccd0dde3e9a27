//! A TCP proxy that a test can cut and restore: in front of PostgreSQL, a
//! database that stops and comes back; in front of the Stripe simulator, a
//! network that breaks. `refuse` closes the port itself, so that new
//! connections are refused (a request that certainly never left).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0);
        let p = Self {
            addr,
            upstream,
            up: Arc::new(AtomicBool::new(true)),
            cut,
            task: Default::default(),
            accepted: Default::default(),
        };
        *p.task.lock().unwrap() = Some(p.serve(listener));
        p
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let upstream = self.upstream;
        let up = self.up.clone();
        let cut = self.cut.clone();
        let accepted = self.accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut cut_rx = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        })
    }

    /// The connections passed through so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The database "stops": open connections are cut, new ones refused.
    pub fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// The database "is back".
    pub fn start_again(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The network goes: open connections are cut and the port is closed,
    /// so that every new connection is refused (a request that certainly
    /// never left).
    pub fn refuse(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        self.cut.send_modify(|n| *n += 1);
    }

    /// Opens the port again after [`Proxy::refuse`].
    pub async fn accept_again(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        *self.task.lock().unwrap() = Some(self.serve(listener));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}
