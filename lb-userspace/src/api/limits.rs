//! Connection limits and idle timeouts for the agent's listeners (API socket, TCP API,
//! metrics): a client that opens connections without end, or opens one and never speaks,
//! must not use up the agent's file descriptors.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::serve::Listener;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

/// Connections served at once per listener; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that neither reads nor writes for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A listener that accepts at most [`MAX_CONNECTIONS`] at once, each closed after
/// [`IDLE_TIMEOUT`] without traffic.
pub struct Limited<L> {
    inner: L,
    permits: Arc<Semaphore>,
    idle: Duration,
    name: &'static str,
}

impl<L: Listener> Limited<L> {
    pub fn new(inner: L, name: &'static str) -> Self {
        Limited::with(inner, name, MAX_CONNECTIONS, IDLE_TIMEOUT)
    }

    pub fn with(inner: L, name: &'static str, max: usize, idle: Duration) -> Self {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            idle,
            name,
        }
    }
}

impl<L: Listener> Listener for Limited<L> {
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!(
                    listener = self.name,
                    "connection limit reached: new connections wait until one closes"
                );
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (io, addr) = self.inner.accept().await;
        let io = Guarded {
            io,
            _permit: permit,
            idle: self.idle,
            deadline: Box::pin(tokio::time::sleep(self.idle)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection holding its permit; reads and writes fail once it was idle
/// too long (the server then closes it).
pub struct Guarded<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn touch(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    /// Called when the I/O would block: has the connection been idle too long?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, routing::get};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::Limited;

    async fn server(max: usize, idle: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(Limited::with(listener, "test", max, idle), app).await });
        addr
    }

    async fn get_on(s: &mut TcpStream) -> std::io::Result<String> {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let addr = server(8, Duration::from_millis(300)).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(get_on(&mut busy).await.unwrap().starts_with("HTTP/1.1 200"));
        }
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the idle connection was closed: {n:?}"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let addr = server(2, Duration::from_secs(30)).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut a).await.is_ok() && get_on(&mut b).await.is_ok());
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(
            get_on(&mut c).await.is_err(),
            "a third connection is not served while two are open"
        );
        drop(a);
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 512];
            c.read(&mut buf)
                .await
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await;
        assert!(
            matches!(&answer, Ok(Ok(t)) if t.starts_with("HTTP/1.1 200")),
            "served once a slot frees: {answer:?}"
        );
    }
}
