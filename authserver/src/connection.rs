//! One client connection: read a line, answer it, repeat, under a line-length limit and
//! idle and read timeouts. Every way a connection ends on our side is announced with
//! an error line first, so a client never sees a silent drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use tanks_core::protocol::auth::{Response, parse_request, reason};

use crate::service::AuthService;

/// Limits for one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_line: usize,
    /// Longest wait for the first byte of the next request.
    pub idle: Duration,
    /// Longest time from a request's first byte to its end (slow-loris guard).
    pub read: Duration,
}

/// Read buffer per connection: small, since requests are; lines longer than this are
/// assembled in the line buffer up to `max_line`.
const READ_BUFFER: usize = 2048;

#[derive(Debug)]
pub enum ReadError {
    TooLong,
    Idle,
    ReadTimeout,
    Io(std::io::Error),
}

/// Splits a byte stream into request lines.
///
/// Besides newline-terminated lines it answers a complete JSON object that arrives
/// without a newline (a client that writes one object and waits) and a last line cut
/// off by end-of-stream, so clients that frame sloppily still get their answer. The
/// newline that may follow such an object later is skipped, not answered as an empty
/// line.
pub struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
    skip_newline: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            line: Vec::new(),
            skip_newline: false,
        }
    }

    /// The next line without its terminator, or None at a clean end of stream.
    pub async fn next_line(&mut self, limits: &ConnLimits) -> Result<Option<&[u8]>, ReadError> {
        self.line.clear();
        let mut deadline = Instant::now() + limits.idle;
        let mut started = false;
        loop {
            let available = match timeout_at(deadline, self.inner.fill_buf()).await {
                Err(_) => {
                    return Err(if started {
                        ReadError::ReadTimeout
                    } else {
                        ReadError::Idle
                    });
                }
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(bytes)) => bytes,
            };
            if available.is_empty() {
                let rest = self.line.trim_ascii();
                return Ok(if rest.is_empty() {
                    None
                } else {
                    Some(&self.line)
                });
            }
            if let Some(pos) = available.iter().position(|&b| b == b'\n') {
                if self.line.len() + pos > limits.max_line {
                    return Err(ReadError::TooLong);
                }
                self.line.extend_from_slice(&available[..pos]);
                self.inner.consume(pos + 1);
                if std::mem::take(&mut self.skip_newline) && self.line.trim_ascii().is_empty() {
                    // The terminator of an object we already answered.
                    self.line.clear();
                    continue;
                }
                return Ok(Some(&self.line));
            }
            let n = available.len();
            if self.line.len() + n > limits.max_line {
                return Err(ReadError::TooLong);
            }
            self.line.extend_from_slice(available);
            self.inner.consume(n);
            if !started {
                started = true;
                deadline = Instant::now() + limits.read;
            }
            if is_complete_object(&self.line) {
                self.skip_newline = true;
                return Ok(Some(&self.line));
            }
        }
    }
}

/// Whether `bytes` hold exactly one complete JSON object. Only tried when the bytes end
/// in `}`, so a normal newline-framed client never pays for it.
fn is_complete_object(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii();
    trimmed.first() == Some(&b'{')
        && trimmed.last() == Some(&b'}')
        && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok()
}

/// Serves one connection until the client leaves, a limit ends it, or shutdown starts
/// while it is between requests (a request in flight always gets its answer).
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    service: Arc<AuthService>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read_half, mut write_half) = stream.split();
    let mut reader = LineReader::new(BufReader::with_capacity(READ_BUFFER, read_half));
    let ip = peer.ip();
    loop {
        let next = tokio::select! {
            biased;
            _ = stopping(&mut shutdown) => {
                let bye = Response::error(reason::SHUTTING_DOWN, "Server shutting down, reconnect shortly");
                send(&mut write_half, &bye, limits.read).await;
                break;
            }
            next = reader.next_line(&limits) => next,
        };
        let response = match next {
            Ok(Some(line)) => match parse_request(line) {
                Ok(request) => service.handle(request, ip).await,
                Err(e) => {
                    let response = Response::from_parse_error(&e);
                    service.count_invalid(&response);
                    response
                }
            },
            Ok(None) => break,
            Err(ReadError::Io(_)) => break,
            Err(e) => {
                let response = match e {
                    ReadError::TooLong => Response::error(
                        reason::LINE_TOO_LONG,
                        format!("Message too long (limit {} bytes)", limits.max_line),
                    ),
                    ReadError::Idle => {
                        Response::error(reason::TIMEOUT, "Idle timeout, closing connection")
                    }
                    _ => Response::error(reason::TIMEOUT, "Read timeout, closing connection"),
                };
                service.count_invalid(&response);
                send(&mut write_half, &response, limits.read).await;
                break;
            }
        };
        if !send(&mut write_half, &response, limits.read).await {
            break;
        }
    }
    drop((reader, write_half));
    linger_close(&mut stream, limits.read.min(Duration::from_secs(2))).await;
}

/// Half-closes and reads (and discards) what the client still sends, for up to
/// `limit` or 64 KiB: closing a socket with unread input makes the kernel send a reset,
/// which can destroy the error line we just wrote before the client reads it.
pub async fn linger_close(stream: &mut TcpStream, limit: Duration) {
    let _ = timeout(limit, async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Resolves once shutdown starts (or its sender is gone). Holds no borrow of the
/// channel afterwards, so the caller may await in its handler.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Writes one answer, giving up after `limit` on a client that does not read.
pub async fn send<W: AsyncWrite + Unpin>(
    out: &mut W,
    response: &Response,
    limit: Duration,
) -> bool {
    matches!(
        timeout(limit, out.write_all(&response.to_line())).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            max_line: 32,
            idle: Duration::from_secs(5),
            read: Duration::from_secs(5),
        }
    }

    async fn lines(input: &[u8]) -> Vec<Result<String, String>> {
        let mut reader = LineReader::new(BufReader::with_capacity(4, input));
        let mut out = Vec::new();
        loop {
            match reader.next_line(&limits()).await {
                Ok(Some(line)) => out.push(Ok(String::from_utf8_lossy(line).into_owned())),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_empty_ones() {
        assert_eq!(
            lines(b"a\n\nbc\r\n").await,
            vec![Ok("a".into()), Ok("".into()), Ok("bc\r".into())]
        );
    }

    #[tokio::test]
    async fn last_line_without_newline_is_served() {
        assert_eq!(
            lines(b"a\nlast").await,
            vec![Ok("a".into()), Ok("last".into())]
        );
    }

    #[tokio::test]
    async fn object_without_newline_is_answered_and_its_newline_skipped() {
        assert_eq!(
            lines(b"{\"a\":1}\n{\"b\":{}}").await,
            vec![Ok("{\"a\":1}".into()), Ok("{\"b\":{}}".into())]
        );
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let long = [b'x'; 40];
        assert_eq!(lines(&long).await, vec![Err("TooLong".into())]);
        let mut with_newline = long.to_vec();
        with_newline.push(b'\n');
        assert_eq!(lines(&with_newline).await, vec![Err("TooLong".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_read_timeouts() {
        let (_client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(BufReader::new(server));
        assert!(matches!(
            reader.next_line(&limits()).await,
            Err(ReadError::Idle)
        ));

        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(BufReader::new(server));
        client.write_all(b"{\"partial").await.unwrap();
        assert!(matches!(
            reader.next_line(&limits()).await,
            Err(ReadError::ReadTimeout)
        ));
    }
}
