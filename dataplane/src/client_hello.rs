//! Reading a TLS ClientHello off a connection without answering it: the SNI chooses the
//! listener and route of a TLS port before anything is sent back.
//!
//! ```text
//!  client ──records──► buffer (every byte kept, ≤ MAX_CLIENT_HELLO_BYTES, until the deadline)
//!                        └─► rustls Acceptor: the whole ClientHello message, maybe across
//!                            several records ──► SNI
//!  then: Passthrough replays the buffer to the backend; Terminate hands it to the TLS
//!        handshake through `Replayed`, which returns the buffered bytes first.
//! ```
//!
//! Nothing is ever written to the client here: a connection that is not TLS, too slow or
//! too large is closed without an alert, which is what Gateway API asks of a TLS listener
//! that cannot serve a connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The most bytes read while waiting for a whole ClientHello. Real ones, with
/// post-quantum key shares and session tickets, stay below 4 KiB; one TLS record holds
/// at most 16 KiB.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// What the client sent first.
#[derive(Debug)]
pub struct ClientHello {
    /// The SNI, lower-cased, without a trailing dot; None when the client sent none.
    pub server_name: Option<String>,
    /// Every byte read from the connection so far (the ClientHello and anything after it).
    pub bytes: Vec<u8>,
}

/// Why no ClientHello could be read; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no complete ClientHello within the deadline")]
    TimedOut,
    #[error("the ClientHello is not complete within {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("the client closed the connection before its ClientHello was complete")]
    Closed,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until the whole ClientHello is in, at most `max` bytes and until `deadline`.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: tokio::time::Instant,
    max: usize,
) -> Result<ClientHello, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let room = max.saturating_sub(bytes.len()).min(chunk.len());
        if room == 0 {
            return Err(HelloError::TooLarge);
        }
        let read = tokio::time::timeout_at(deadline, stream.read(chunk.get_mut(..room).unwrap_or_default())).await;
        let n = match read {
            Err(_) => return Err(HelloError::TimedOut),
            Ok(Err(error)) => return Err(HelloError::Io(error)),
            Ok(Ok(0)) => return Err(HelloError::Closed),
            Ok(Ok(n)) => n,
        };
        let new = chunk.get(..n).unwrap_or_default();
        bytes.extend_from_slice(new);
        let mut unread = new;
        while !unread.is_empty() {
            match acceptor.read_tls(&mut unread) {
                Ok(0) => return Err(HelloError::TooLarge),
                Ok(_) => {}
                Err(error) => return Err(HelloError::NotTls(error.to_string())),
            }
        }
        // The alert rustls would send on a bad ClientHello is dropped on purpose.
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let server_name =
                    accepted.client_hello().server_name().map(|name| name.trim_end_matches('.').to_ascii_lowercase());
                return Ok(ClientHello { server_name, bytes });
            }
            Err((error, _alert)) => return Err(HelloError::NotTls(error.to_string())),
        }
    }
}

/// A stream that first returns bytes already read from it, then reads on.
#[derive(Debug)]
pub struct Replayed<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` was returned already.
    position: usize,
    inner: S,
}

impl<S> Replayed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Replayed { prefix, position: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let rest = this.prefix.get(this.position..).unwrap_or_default();
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        this.position += n;
        if this.position == this.prefix.len() {
            this.prefix = Vec::new();
            this.position = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// The first flight of a real rustls client for `server_name`.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn reads_the_sni_and_keeps_every_byte() {
        let hello = client_hello("Abc.Example.com");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        // The ClientHello split in three writes, then a byte of what follows it.
        for part in hello.chunks(hello.len() / 3 + 1) {
            client.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
        let read = read_client_hello(&mut server, soon(), MAX_CLIENT_HELLO_BYTES).await.unwrap();
        assert_eq!(read.server_name.as_deref(), Some("abc.example.com"));
        assert_eq!(read.bytes, hello);
    }

    #[tokio::test]
    async fn a_hello_split_across_records_is_reassembled() {
        // Re-frame the handshake message into 100-byte TLS records.
        let hello = client_hello("split.example.com");
        let message = &hello[5..];
        let mut framed = Vec::new();
        for part in message.chunks(100) {
            framed.extend_from_slice(&[0x16, 0x03, 0x01]);
            framed.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(part);
        }
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&framed).await.unwrap();
        let read = read_client_hello(&mut server, soon(), MAX_CLIENT_HELLO_BYTES).await.unwrap();
        assert_eq!(read.server_name.as_deref(), Some("split.example.com"));
    }

    #[tokio::test]
    async fn garbage_short_reads_and_oversized_hellos_are_refused() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let error = read_client_hello(&mut server, soon(), MAX_CLIENT_HELLO_BYTES).await.unwrap_err();
        assert!(matches!(error, HelloError::NotTls(_)), "{error:?}");

        let hello = client_hello("abc.example.com");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello[..hello.len() - 1]).await.unwrap();
        drop(client);
        let error = read_client_hello(&mut server, soon(), MAX_CLIENT_HELLO_BYTES).await.unwrap_err();
        assert!(matches!(error, HelloError::Closed), "{error:?}");

        // A handshake message announcing 60 KiB, sent in full records: cut at the cap.
        let mut huge = vec![0x01, 0x00, 0xf0, 0x00];
        huge.resize(4 + 0xf000, 0);
        let (mut client, mut server) = tokio::io::duplex(128 * 1024);
        let writer = tokio::spawn(async move {
            for part in huge.chunks(16 * 1024) {
                let mut record = vec![0x16, 0x03, 0x01];
                record.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
                record.extend_from_slice(part);
                if client.write_all(&record).await.is_err() {
                    break;
                }
            }
            client
        });
        let error = read_client_hello(&mut server, soon(), MAX_CLIENT_HELLO_BYTES).await.unwrap_err();
        assert!(matches!(error, HelloError::TooLarge), "{error:?}");
        drop(server);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn a_hello_that_does_not_finish_in_time_is_cut() {
        let hello = client_hello("abc.example.com");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello[..10]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let error = read_client_hello(&mut server, deadline, MAX_CLIENT_HELLO_BYTES).await.unwrap_err();
        assert!(matches!(error, HelloError::TimedOut), "{error:?}");
        assert!(tokio::time::Instant::now() >= deadline);
        drop(client);
    }

    #[tokio::test]
    async fn replayed_returns_the_prefix_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut replayed = Replayed::new(b"hello".to_vec(), server);
        let mut text = String::new();
        replayed.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello world");
    }
}
