//! A gRPC client that sends the `:authority` grpc-core clients (Python grpcio, C++, Ruby) send
//! on a unix socket: the percent-encoded socket path, e.g. `tmp%2Ffoo%2Fcri.sock`.
//!
//! tonic's and hyper's clients cannot send such a value (their URI type refuses it), so this one
//! speaks HTTP/2 with h2's frame codec directly: preface, SETTINGS, one request stream (HEADERS +
//! DATA), and reads the answer (HEADERS, DATA, trailers) or the reset the server sends.

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use h2::Codec;
use h2::frame::{BytesStr, Data, Frame, Headers, Ping, Pseudo, Settings, StreamId};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The `:authority` grpc-core derives from a unix socket path: the path without its leading
/// `/`, with every `/` percent-encoded.
pub fn authority_of(socket: &Path) -> String {
    let s = socket.display().to_string();
    s.trim_start_matches('/').replace('/', "%2F")
}

/// Calls the unary method `path` (`/runtime.v1.RuntimeService/Version`) on `socket` with
/// `:authority` set to `authority`. `Err` carries the reset reason or the non-OK gRPC status.
pub async fn unary<Req, Resp>(
    socket: &Path,
    authority: &str,
    path: &str,
    req: &Req,
) -> Result<Resp, String>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let mut v = unary_calls(socket, authority, path, req, 1).await?;
    v.pop().ok_or_else(|| "no answer".to_string())
}

type Conn = Codec<tokio::net::UnixStream, Bytes>;

async fn send(c: &mut Conn, f: Frame<Bytes>) -> Result<(), String> {
    std::future::poll_fn(|cx| c.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    c.buffer(f).map_err(|e| format!("buffer: {e}"))?;
    std::future::poll_fn(|cx| c.flush(cx))
        .await
        .map_err(|e| e.to_string())
}

/// `calls` calls of [`unary`] one after the other on one connection (streams 1, 3, 5, …): from
/// the second on, the header compression refers to the authority by its table index.
pub async fn unary_calls<Req, Resp>(
    socket: &Path,
    authority: &str,
    path: &str,
    req: &Req,
    calls: u32,
) -> Result<Vec<Resp>, String>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let mut io = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    io.write_all(PREFACE).await.map_err(|e| e.to_string())?;
    let mut c: Conn = Codec::new(io);
    send(&mut c, Settings::default().into()).await?;
    let mut out = Vec::new();
    for n in 0..calls {
        out.push(call(&mut c, StreamId::from(1 + 2 * n), authority, path, req).await?);
    }
    Ok(out)
}

async fn call<Req, Resp>(
    c: &mut Conn,
    id: StreamId,
    authority: &str,
    path: &str,
    req: &Req,
) -> Result<Resp, String>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let uri: http::Uri = format!("http://localhost{path}")
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let mut pseudo = Pseudo::request(http::Method::POST, uri, None);
    pseudo.authority = Some(
        BytesStr::try_from(Bytes::copy_from_slice(authority.as_bytes()))
            .map_err(|e| e.to_string())?,
    );
    let mut fields = http::HeaderMap::new();
    fields.insert("content-type", "application/grpc".parse().unwrap());
    fields.insert("te", "trailers".parse().unwrap());
    let body = req.encode_to_vec();
    let mut msg = BytesMut::with_capacity(5 + body.len());
    msg.put_u8(0);
    msg.put_u32(body.len() as u32);
    msg.put_slice(&body);
    let mut data = Data::new(id, msg.freeze());
    data.set_end_stream(true);
    send(c, Headers::new(id, pseudo, fields).into()).await?;
    send(c, data.into()).await?;

    let mut answer = BytesMut::new();
    let mut grpc_status: Option<(String, String)> = None;
    while let Some(frame) = c.next().await {
        let frame = frame.map_err(|e| format!("decode: {e}"))?;
        let reply = match frame {
            Frame::Settings(s) if !s.is_ack() => Some(Settings::ack().into()),
            Frame::Ping(p) if !p.is_ack() => Some(Ping::pong(p.into_payload()).into()),
            Frame::Reset(r) if r.stream_id() == id => {
                return Err(format!("stream reset: {:?}", r.reason()));
            }
            Frame::GoAway(g) => return Err(format!("go away: {:?}", g.reason())),
            Frame::Data(d) if d.stream_id() == id => {
                answer.extend_from_slice(d.payload());
                if d.is_end_stream() {
                    break;
                }
                None
            }
            Frame::Headers(h) if h.stream_id() == id => {
                let end = h.is_end_stream();
                let f = h.fields();
                if let Some(s) = f.get("grpc-status") {
                    let m = f
                        .get("grpc-message")
                        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                        .unwrap_or_default();
                    grpc_status = Some((String::from_utf8_lossy(s.as_bytes()).into_owned(), m));
                }
                if end {
                    break;
                }
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            send(c, r).await?;
        }
    }
    match grpc_status {
        Some((s, _)) if s == "0" => {}
        Some((s, m)) => return Err(format!("grpc-status {s}: {m}")),
        None => return Err("the stream ended without a grpc-status".into()),
    }
    if answer.len() < 5 {
        return Err(format!("short answer ({} bytes)", answer.len()));
    }
    Resp::decode(&answer[5..]).map_err(|e| format!("decoding the answer: {e}"))
}
