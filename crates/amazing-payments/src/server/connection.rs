//! One connection and its watchdog: the limits in time that hyper does not
//! keep by itself. Three parts share one [`Activity`]:
//!
//! - [`Watched`], the socket, notes when bytes move and whether the client
//!   opened with the HTTP/2 preface;
//! - [`Counted`], the service, counts the requests in flight, from a complete
//!   head to the end (or the drop) of the answer's body, not to the moment the
//!   answer's head is sent;
//! - [`serve`]'s loop asks [`Activity::verdict`] when the next limit falls
//!   due, and ends the connection then.
//!
//! While no request is in flight:
//!
//! - HTTP/1.1 (and a client that has not yet shown which protocol it speaks):
//!   a request's head must be complete within the header timeout, counted
//!   from the connection (the first request) or from the head's first byte
//!   (later ones); else the connection is closed at once, as nothing was
//!   asked. Between requests, a keep-alive connection on which nothing moves
//!   for the idle timeout is shut down. hyper's own header timer is not used:
//!   it also runs while a keep-alive connection waits for its next request
//!   (hyper 1.12, `proto/h1/conn.rs`), so idle connections would be closed
//!   after the header timeout instead of the idle one.
//! - HTTP/2: a connection without a request for the idle timeout is shut
//!   down gracefully (GOAWAY), whatever bytes move: keep-alive PINGs move
//!   bytes, and a client stuck in a header block (HEADERS without
//!   END_HEADERS) has no request yet. So is one that sent only the preface.
//! - A connection shut down gracefully that is still open [`GRACE`] later,
//!   with no request in flight and no bytes moving for [`GRACE`] (an answer
//!   still being written to a slow reader moves bytes), is closed: hyper
//!   waits for the head of a first
//!   request that never comes (HTTP/1.1) or for the answer to the PING that
//!   follows a GOAWAY (HTTP/2), which a stalled client never sends.
//!
//! While a request is in flight nothing here ends its connection: its body
//! has a deadline of its own ([`crate::http::limits`]).

use axum::{Router, extract::ConnectInfo};
use http_body::{Body, Frame, SizeHint};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::{Duration, Instant},
};

/// How long a connection shut down gracefully may stay open with no request
/// in flight before it is closed.
pub const GRACE: Duration = Duration::from_secs(1);

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `head_since` when no head is under way.
const NONE: u64 = u64::MAX;

/// The limits the watchdog keeps.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// What a connection has done, shared by its socket, its service and its
/// watchdog. Instants are milliseconds since `born`.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    /// The last byte read or written.
    last_io: AtomicU64,
    /// The first byte of a request head read while no request was in flight
    /// (HTTP/1.1), or [`NONE`].
    head_since: AtomicU64,
    /// When the last request ended; 0 before the first.
    quiet_since: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests begun.
    begun: AtomicU64,
    http2: AtomicBool,
}

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is due: look again after this long.
    Wait(Duration),
    /// Quiet for the idle timeout: shut down gracefully.
    Idle,
    /// A request head not complete in time: close.
    Late,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            born: Instant::now(),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            quiet_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.born + Duration::from_millis(millis)
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Release);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Release);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// What is due at `now`.
    pub fn verdict(&self, now: Instant, limits: Timeouts) -> Verdict {
        if self.in_flight() > 0 {
            return Verdict::Wait(limits.header.min(limits.idle));
        }
        let quiet = self.quiet_since.load(Ordering::Acquire);
        let head = self.head_since.load(Ordering::Acquire);
        let (due, verdict) = if self.http2.load(Ordering::Acquire) {
            (self.at(quiet) + limits.idle, Verdict::Idle)
        } else if self.begun.load(Ordering::Acquire) == 0 {
            (self.born + limits.header, Verdict::Late)
        } else if head != NONE {
            (self.at(head) + limits.header, Verdict::Late)
        } else {
            (self.at(quiet.max(self.last_io.load(Ordering::Acquire))) + limits.idle, Verdict::Idle)
        };
        match due.checked_duration_since(now) {
            Some(left) if !left.is_zero() => Verdict::Wait(left),
            _ => verdict,
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A request in flight; it ends when dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.begun.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NONE, Ordering::Release);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Quiet from now, before the count says so.
        self.0.quiet_since.store(self.0.now(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A socket that tells its [`Activity`] when bytes move.
    #[derive(Debug)]
    pub struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
        // Bytes of the HTTP/2 preface seen so far; usize::MAX once the
        // client has sent something else.
        preface: usize,
    }
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity, preface: 0 }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if *this.preface < H2_PREFACE.len() {
                let expected = &H2_PREFACE[*this.preface..];
                let n = expected.len().min(read.len());
                if read[..n] == expected[..n] {
                    *this.preface += n;
                    if *this.preface == H2_PREFACE.len() {
                        this.activity.http2.store(true, Ordering::Release);
                    }
                } else {
                    *this.preface = usize::MAX;
                }
            }
            this.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        if n > 0 {
            this.activity.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.activity.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A connection's service: counts its requests in flight and gives each the
/// peer's address (`ConnectInfo<SocketAddr>`).
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    peer: SocketAddr,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = InFlight::begin(self.activity.clone());
        CountedFuture { inner: self.inner.call(req), in_flight: Some(in_flight) }
    }
}

pin_project! {
    /// The answer of a [`Counted`] service; the request stays in flight with
    /// the answer's body.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked { body, in_flight })))
    }
}

pin_project! {
    /// An answer's body; its request ends with it.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves one connection until it ends, its limits close it, or, once
/// `stop` turns true, its requests in flight are answered.
pub async fn serve(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let service = Counted { inner: TowerToHyperService::new(router), activity: activity.clone(), peer };
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut check = pin!(tokio::time::sleep(limits.header.min(limits.idle)));
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended by an error");
                }
                return;
            }
            () = stopped(&mut stop), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                check.as_mut().reset(Instant::now() + GRACE);
            }
            () = check.as_mut() => {
                let now = Instant::now();
                let next = match closing {
                    // Nothing in flight and no bytes moving (an answer still being
                    // flushed to a slow reader moves bytes): stalled, so closed.
                    Some(since)
                        if now >= since + GRACE
                            && activity.in_flight() == 0
                            && now >= activity.at(activity.last_io.load(Ordering::Acquire)) + GRACE =>
                    {
                        tracing::debug!(%peer, "connection still open after its shutdown: closed");
                        return;
                    }
                    Some(_) => now + GRACE,
                    None => match activity.verdict(now, limits) {
                        Verdict::Wait(left) => now + left,
                        Verdict::Late => {
                            tracing::debug!(%peer, "request head not complete within HEADER_READ_TIMEOUT: closed");
                            return;
                        }
                        Verdict::Idle => {
                            tracing::debug!(%peer, "connection idle for IDLE_TIMEOUT: shutting it down");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now);
                            now + GRACE
                        }
                    },
                };
                check.as_mut().reset(next);
            }
        }
    }
}

/// Completes when `stop` turns true (or can no longer change).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Timeouts = Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(75) };

    fn after(a: &Activity, secs: u64) -> Instant {
        a.born + Duration::from_secs(secs)
    }

    #[test]
    fn a_first_request_head_is_due_within_the_header_timeout_of_connecting() {
        let a = Activity::new();
        assert!(matches!(a.verdict(after(&a, 9), LIMITS), Verdict::Wait(_)));
        assert_eq!(a.verdict(after(&a, 10), LIMITS), Verdict::Late);
        a.read();
        assert_eq!(a.verdict(after(&a, 10), LIMITS), Verdict::Late, "half a head is no head");
    }

    #[test]
    fn a_keep_alive_connection_waits_the_idle_timeout_and_a_new_head_the_header_timeout() {
        let a = Arc::new(Activity::new());
        drop(InFlight::begin(a.clone()));
        assert!(matches!(a.verdict(after(&a, 74), LIMITS), Verdict::Wait(_)), "not the header timeout");
        assert_eq!(a.verdict(after(&a, 75), LIMITS), Verdict::Idle);
        a.read();
        assert_eq!(a.verdict(after(&a, 10), LIMITS), Verdict::Late, "a head under way has the header timeout");
    }

    #[test]
    fn nothing_is_due_while_a_request_is_in_flight() {
        let a = Arc::new(Activity::new());
        let request = InFlight::begin(a.clone());
        assert!(matches!(a.verdict(after(&a, 3600), LIMITS), Verdict::Wait(_)));
        drop(request);
        assert_eq!(a.verdict(after(&a, 3600), LIMITS), Verdict::Idle);
    }

    #[tokio::test]
    async fn an_http2_connection_without_a_request_is_idle_whatever_bytes_move() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let a = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, a.clone());
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let mut buf = [0; 64];
        let _ = watched.read(&mut buf).await.unwrap();
        assert!(!a.http2.load(Ordering::Acquire), "not yet the whole preface");
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let _ = watched.read(&mut buf).await.unwrap();
        assert!(a.http2.load(Ordering::Acquire));
        assert!(matches!(a.verdict(after(&a, 74), LIMITS), Verdict::Wait(_)), "not the header timeout");
        assert_eq!(a.verdict(after(&a, 75), LIMITS), Verdict::Idle);
    }
}
