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
//! in-memory pipe. The server's bytes go back to the client unchanged. Every header field and
//! payload is kept; besides an unparsable `:authority`, only what h2's encoder cannot write
//! is dropped: HEADERS priority fields (deprecated by RFC 9113) and padding. A padded DATA
//! frame's padding counts against the client's flow-control window but is not seen by the
//! server, so it is not credited back; gRPC clients do not pad.

use bytes::Bytes;
use h2::Codec;
use h2::frame::{BytesStr, Data, Frame, Headers};
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
        let frame = frame.map_err(|e| RelayError::Decode(e.to_string()))?;
        let frame = match frame {
            // Rebuilt rather than passed on: a decoded frame keeps its PADDED and PRIORITY
            // flags, which the encoder would write without the padding or priority fields.
            Frame::Headers(h) => {
                if h.is_over_size() {
                    return Err(RelayError::Decode("header list over size".into()));
                }
                let (id, end) = (h.stream_id(), h.is_end_stream());
                let (mut pseudo, fields) = h.into_parts();
                if pseudo.authority.as_deref().is_some_and(|a| !is_valid(a)) {
                    tracing::trace!(authority = ?pseudo.authority, "replacing an unparsable :authority");
                    pseudo.authority = Some(
                        BytesStr::try_from(Bytes::from_static(LOCALHOST.as_bytes()))
                            .map_err(|e| RelayError::Encode(e.to_string()))?,
                    );
                }
                let mut out = Headers::new(id, pseudo, fields);
                if end {
                    out.set_end_stream();
                }
                Frame::Headers(out)
            }
            Frame::Data(d) => {
                let (id, end) = (d.stream_id(), d.is_end_stream());
                if d.is_padded() {
                    tracing::debug!("a padded DATA frame is relayed without its padding");
                }
                let mut out = Data::new(id, d.into_payload());
                out.set_end_stream(end);
                Frame::Data(out)
            }
            other => other,
        };
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

    /// A frame: 9-byte head and payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Raw frames as a grpc-core client could send them (with PADDED and PRIORITY flags, which
    /// the relay must not pass on half-written) reach an h2 server with the authority replaced
    /// and the body intact.
    #[tokio::test]
    async fn the_relay_replaces_the_authority_and_keeps_the_request() {
        let (mut client, relay_in) = tokio::io::duplex(1 << 16);
        let server_io = relay(relay_in);
        let authority = b"tmp%2Ffoo%2Fcri.sock";
        // HPACK: :method POST, :scheme http (static indexes), :path and :authority as literals.
        let mut block = vec![0x83, 0x86, 0x44, 2, b'/', b'x', 0x41, authority.len() as u8];
        block.extend_from_slice(authority);
        // HEADERS, END_HEADERS | PADDED | PRIORITY: pad length, dependency, weight, block, pad.
        let mut h = vec![2, 0, 0, 0, 0, 15];
        h.extend_from_slice(&block);
        h.extend_from_slice(&[0, 0]);
        // DATA, END_STREAM | PADDED.
        let d = [3, b'h', b'e', b'l', b'l', b'o', 0, 0, 0];
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, 0, &[]));
        bytes.extend(frame(1, 0x4 | 0x8 | 0x20, 1, &h));
        bytes.extend(frame(0, 0x1 | 0x8, 1, &d));
        client.write_all(&bytes).await.unwrap();

        let mut conn = h2::server::handshake(server_io).await.unwrap();
        let (req, _respond) = conn.accept().await.expect("a request").unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().authority().map(|a| a.as_str()), Some(LOCALHOST));
        assert_eq!(req.uri().path(), "/x");
        let mut body = req.into_body();
        let data = body.data().await.expect("a body").unwrap();
        assert_eq!(&data[..], b"hello");
        assert!(body.is_end_stream());
    }

    #[test]
    fn what_the_http2_layer_refuses() {
        assert!(is_valid("localhost"));
        assert!(is_valid("127.0.0.1:1234"));
        // grpc-core's authority for unix:/tmp/foo/cri.sock, and grpc-java's.
        assert!(!is_valid("tmp%2Ffoo%2Fcri.sock"));
        assert!(!is_valid("/tmp/foo/cri.sock"));
    }
}
