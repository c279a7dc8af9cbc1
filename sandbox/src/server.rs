//! The small HTTP/1.1 server both stand-ins run on.
//!
//! It is a hand-written accept loop over hyper rather than `axum::serve`, for two reasons:
//! - a handler can ask for its connection to be dropped without an answer
//!   ([`Connection::close_without_answer`]), which `axum::serve` offers no way to do;
//! - every connection task lives in a `JoinSet` owned by the accept task, so dropping the
//!   [`SandboxServer`] aborts them all, including requests stuck in a "hang" fault.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// A running stand-in. Dropping it stops the server and every open connection.
#[derive(Debug)]
pub struct SandboxServer {
    addr: SocketAddr,
    base_path: &'static str,
    accept_task: JoinHandle<()>,
}

impl SandboxServer {
    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` followed by the stand-in's path prefix (`/v2` for RevenueCat).
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, self.base_path)
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

/// The address `start()` binds: loopback with an ephemeral port.
pub(crate) fn ephemeral_loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Handle on the TCP connection a request arrived on.
#[derive(Clone, Default)]
pub(crate) struct Connection {
    close: Arc<Notify>,
}

impl Connection {
    /// Drops the connection without writing a response. The returned future never completes;
    /// the connection task drops it together with the connection.
    pub(crate) async fn close_without_answer(&self) -> Response {
        // `notify_one` stores a permit, so the close happens even if the connection task is
        // not waiting at this very moment.
        self.close.notify_one();
        std::future::pending().await
    }
}

/// Binds `addr` and serves every request with `handler` on the current tokio runtime.
pub(crate) async fn serve<H, F>(
    addr: SocketAddr,
    base_path: &'static str,
    handler: H,
) -> io::Result<SandboxServer>
where
    H: Fn(Request<Body>, Connection) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let accept_task = tokio::spawn(accept_loop(listener, handler));
    Ok(SandboxServer { addr, base_path, accept_task })
}

async fn accept_loop<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Body>, Connection) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, handler.clone()));
                }
                // Accept errors are transient (e.g. too many open files); back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<H, F>(stream: TcpStream, handler: H)
where
    H: Fn(Request<Body>, Connection) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    // Best effort: small JSON answers should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let connection = Connection::default();
    let service = {
        let connection = connection.clone();
        service_fn(move |request: Request<Incoming>| {
            let answer = handler(request.map(Body::new), connection.clone());
            async move { Ok::<_, Infallible>(answer.await) }
        })
    };
    let http = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // I/O errors (e.g. the client hung up) end the connection; nothing to report.
        _ = http => {}
        // Dropping `http` here closes the socket without writing anything.
        () = connection.close.notified() => {}
    }
}
