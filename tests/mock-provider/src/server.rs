//! The accept loop: one task per connection, HTTP/1.1 with keep-alive.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::handler;
use crate::state::State;

/// Serves until `shutdown` completes, then closes every connection.
pub(crate) async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&state)));
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    eprintln!("ironcage-mock-provider: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    // Small request/response pairs: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handler::handle(Arc::clone(&state), request));
    // Errors here are clients going away or deliberate drops; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
