//! Accepting any `:authority` on the unix socket.
//!
//! On a unix socket the `:authority` pseudo-header names nothing: Go clients (kubelet, crictl)
//! send `localhost`, grpc-core clients (Python grpcio, C++, Ruby) send the percent-encoded
//! socket path (`tmp%2Frun%2Fcri.sock`). The HTTP/2 layer under tonic parses `:authority` as
//! an RFC 3986 authority and resets every stream whose value is not one (`%` is not allowed in
//! a host), before any service code sees the request, and it has no setting to relax that.
//!
//! So each accepted connection is relayed through [`relay`]: frames from the client are decoded
//! with h2's own frame codec (HPACK state included), an `:authority` that does not parse is
//! replaced by `localhost`, and the frames are encoded again towards the server over an
//! in-memory pipe. The server's bytes go back to the client unchanged. Every other field is
//! kept; nothing but the value of an unparsable `:authority` changes.

use bytes::Bytes;
use h2::Codec;
use h2::frame::{BytesStr, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_stream::StreamExt;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What an unparsable authority becomes (what Go clients send).
const LOCALHOST: &str = "localhost";
/// Largest frame the relay decodes or encodes (RFC 9113's maximum of SETTINGS_MAX_FRAME_SIZE):
/// the server enforces its own, smaller, limit on what it receives.
const MAX_FRAME: usize = (1 << 24) - 1;
/// Size of the in-memory pipe between the relay and the server.
const PIPE: usize = 256 << 10;

/// Whether `value` is an authority the HTTP/2 layer accepts.
pub fn is_valid(value: &str) -> bool {
    value.parse::<http::uri::Authority>().is_ok()
}

/// Starts relaying `client` and returns the server's end of the pipe.
pub fn relay<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (server_end, ours) = tokio::io::duplex(PIPE);
    let (client_rd, mut client_wr) = tokio::io::split(client);
    let (mut ours_rd, ours_wr) = tokio::io::split(ours);
    tokio::spawn(async move {
        if let Err(e) = client_to_server(client_rd, ours_wr).await {
            tracing::debug!(error = %e, "CRI connection: client side closed");
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ours_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    });
    server_end
}

/// One direction of a stream: only reads (`W` is a sink) or only writes (`R` is empty).
struct Half<R, W> {
    rd: R,
    wr: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Half<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Half<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.wr).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.wr).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.wr).poll_shutdown(cx)
    }
}

/// Why a relayed connection ended early.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("decoding the client's frames: {0}")]
    Decode(String),
    #[error("encoding a frame: {0}")]
    Encode(String),
}

async fn client_to_server<R, W>(mut rd: R, mut wr: W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The preface is not a frame: forward it as it is. Anything else (not HTTP/2 with prior
    // knowledge) is forwarded unchanged for the server to refuse.
    let mut preface = [0u8; PREFACE.len()];
    let mut got = 0;
    while got < preface.len() {
        let n = rd.read(&mut preface[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    wr.write_all(&preface[..got]).await?;
    if &preface[..got] != PREFACE {
        wr.flush().await?;
        tokio::io::copy(&mut rd, &mut wr).await?;
        wr.shutdown().await?;
        return Ok(());
    }
    let mut dec: Codec<_, Bytes> = Codec::new(Half {
        rd,
        wr: tokio::io::sink(),
    });
    dec.set_max_recv_frame_size(MAX_FRAME);
    let mut enc: Codec<_, Bytes> = Codec::new(Half {
        rd: tokio::io::empty(),
        wr,
    });
    enc.set_max_send_frame_size(MAX_FRAME);
    while let Some(frame) = dec.next().await {
        let mut frame = frame.map_err(|e| RelayError::Decode(e.to_string()))?;
        if let Frame::Headers(h) = &mut frame {
            let pseudo = h.pseudo_mut();
            if pseudo.authority.as_deref().is_some_and(|a| !is_valid(a)) {
                tracing::trace!(authority = ?pseudo.authority, "replacing an unparsable :authority");
                pseudo.authority = Some(
                    BytesStr::try_from(Bytes::from_static(LOCALHOST.as_bytes()))
                        .map_err(|e| RelayError::Encode(e.to_string()))?,
                );
            }
        }
        std::future::poll_fn(|cx| enc.poll_ready(cx)).await?;
        enc.buffer(frame)
            .map_err(|e| RelayError::Encode(e.to_string()))?;
        std::future::poll_fn(|cx| enc.flush(cx)).await?;
    }
    std::future::poll_fn(|cx| enc.shutdown(cx)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_http2_layer_refuses() {
        assert!(is_valid("localhost"));
        assert!(is_valid("127.0.0.1:1234"));
        // grpc-core's authority for unix:/tmp/foo/cri.sock, and grpc-java's.
        assert!(!is_valid("tmp%2Ffoo%2Fcri.sock"));
        assert!(!is_valid("/tmp/foo/cri.sock"));
    }
}
