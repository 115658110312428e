//! A lean gRPC client for ShouldRateLimit: HTTP/2 straight over `h2`, request bodies encoded
//! by hand into one buffer, and only the overall code read back. The generator shares the
//! machine with the server it measures, so every microsecond it spends is taken from the server.

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use prost::Message;
use tokio::net::TcpStream;

use crate::Outcome;
use floodgate::pb::{RateLimitResponse, rate_limit_response};

/// One HTTP/2 connection to the server, shareable by many concurrent calls.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    sender: SendRequest<Bytes>,
    uri: Uri,
}

impl Connection {
    /// Connects to `addr` (host:port, plaintext HTTP/2) and drives the connection on the runtime.
    pub(crate) async fn open(addr: &str) -> anyhow::Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri =
            format!("http://{addr}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
                .parse()?;
        Ok(Connection { sender, uri })
    }

    /// Sends one gRPC-framed request body and reads the answer.
    pub(crate) async fn call(&self, body: Bytes) -> Outcome {
        match self.exchange(body).await {
            Ok(Some(code)) if code == rate_limit_response::Code::OverLimit as i32 => {
                Outcome::OverLimit
            }
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) | Err(_) => Outcome::Error,
        }
    }

    /// The response's overall code, or `None` for a failed call (non-200, grpc-status not 0,
    /// or an unreadable message).
    async fn exchange(&self, body: Bytes) -> Result<Option<i32>, h2::Error> {
        Ok(match self.reply(body, None).await? {
            Reply::Answer(response) => response.map(|r| r.overall_code),
            Reply::Status(_) | Reply::Http(_) => None,
        })
    }

    /// Sends one gRPC-framed request body (with `grpc-timeout` when `deadline` is given, as
    /// Envoy sends its own) and reads the whole reply.
    pub(crate) async fn reply(
        &self,
        body: Bytes,
        deadline: Option<std::time::Duration>,
    ) -> Result<Reply, h2::Error> {
        let mut sender = self.sender.clone().ready().await?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        if let Some(deadline) = deadline {
            let millis = format!("{}m", deadline.as_millis().max(1));
            headers.insert(
                "grpc-timeout",
                HeaderValue::from_str(&millis).expect("digits"),
            );
        }
        let (response, mut stream) = sender.send_request(request, false)?;
        stream.send_data(body, true)?;
        let response = response.await?;
        if response.status() != 200 {
            return Ok(Reply::Http(response.status().as_u16()));
        }
        // A trailers-only answer carries grpc-status in its headers.
        if let Some(code) = grpc_status(response.headers()).filter(|&code| code != 0) {
            return Ok(Reply::Status(code));
        }
        let mut body = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        // No grpc-status at all is a broken answer: counted as UNKNOWN (2).
        match trailers.as_ref().and_then(grpc_status).unwrap_or(2) {
            0 => {}
            code => return Ok(Reply::Status(code)),
        }
        // 1 byte compressed flag, 4 bytes length, then the message.
        if message.len() < 5 {
            return Ok(Reply::Answer(None));
        }
        Ok(Reply::Answer(
            RateLimitResponse::decode(&message[5..]).ok().map(Box::new),
        ))
    }
}

/// What a call got back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// grpc-status 0 and the response (`None` when it could not be read).
    Answer(Option<Box<RateLimitResponse>>),
    /// A gRPC status other than 0.
    Status(u32),
    /// An HTTP status other than 200.
    Http(u16),
}

/// The grpc-status in `headers`, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What one request asks: its domain and descriptors (each of one entry).
pub(crate) struct RequestShape<'a> {
    /// The rate limit domain.
    pub(crate) domain: &'a str,
    /// Descriptors per request; descriptor `d` has key `k{d}`.
    pub(crate) descriptors: usize,
}

impl<'a> RequestShape<'a> {
    /// Requests to `domain` with `descriptors` descriptors, as the command line gives them.
    pub(crate) fn new(domain: &'a str, descriptors: u8) -> RequestShape<'a> {
        RequestShape {
            domain,
            descriptors: usize::from(descriptors),
        }
    }
}

/// Encodes a ShouldRateLimit request as one gRPC frame into `buf` (reused between calls):
/// each descriptor is one entry, key `k{d}` and value `value`, or key and value `hot` for the
/// hot key. Hand-written protobuf (field 1 domain, field 2 descriptors, whose field 1 entries
/// hold field 1 key and field 2 value), so the generator builds no message structs.
pub(crate) fn encode_request(buf: &mut BytesMut, shape: &RequestShape<'_>, value: Value) -> Bytes {
    let mut key = itoa::Buffer::new();
    let mut number = itoa::Buffer::new();
    let (value_prefix, value_digits) = match value {
        Value::Hot => ("hot", ""),
        Value::Key(n) => ("v", number.format(n)),
    };
    let value_len = value_prefix.len() + value_digits.len();
    let mut message_len = field_len(shape.domain.len());
    let mut descriptor_lens = [0usize; 16];
    for (d, len) in descriptor_lens
        .iter_mut()
        .enumerate()
        .take(shape.descriptors.min(16))
    {
        let key_len = match value {
            Value::Hot => 3,
            Value::Key(_) => 1 + key.format(d).len(),
        };
        let entry = field_len(key_len) + field_len(value_len);
        *len = field_len(entry);
        message_len += field_len(*len);
    }
    buf.reserve(5 + message_len);
    buf.put_u8(0);
    buf.put_u32(message_len as u32);
    put_bytes(buf, 1, shape.domain.as_bytes());
    for (d, len) in descriptor_lens
        .iter()
        .enumerate()
        .take(shape.descriptors.min(16))
    {
        put_tag_len(buf, 2, *len);
        let (key_prefix, key_digits) = match value {
            Value::Hot => ("hot", ""),
            Value::Key(_) => ("k", key.format(d)),
        };
        let key_len = key_prefix.len() + key_digits.len();
        put_tag_len(buf, 1, field_len(key_len) + field_len(value_len));
        put_tag_len(buf, 1, key_len);
        buf.put_slice(key_prefix.as_bytes());
        buf.put_slice(key_digits.as_bytes());
        put_tag_len(buf, 2, value_len);
        buf.put_slice(value_prefix.as_bytes());
        buf.put_slice(value_digits.as_bytes());
    }
    buf.split().freeze()
}

/// Encodes a ShouldRateLimit request as one gRPC frame: `domain`, and one descriptor of one
/// entry per `(key, value)` pair. For the soak, whose requests differ in shape; the same
/// hand-written protobuf as [`encode_request`].
pub(crate) fn encode_entries(domain: &str, descriptors: &[(&str, &str)]) -> Bytes {
    let entry_len = |key: &str, value: &str| field_len(key.len()) + field_len(value.len());
    let message_len = field_len(domain.len())
        + descriptors
            .iter()
            .map(|(key, value)| field_len(field_len(entry_len(key, value))))
            .sum::<usize>();
    let mut buf = BytesMut::with_capacity(5 + message_len);
    buf.put_u8(0);
    buf.put_u32(message_len as u32);
    put_bytes(&mut buf, 1, domain.as_bytes());
    for (key, value) in descriptors {
        put_tag_len(&mut buf, 2, field_len(entry_len(key, value)));
        put_tag_len(&mut buf, 1, entry_len(key, value));
        put_bytes(&mut buf, 1, key.as_bytes());
        put_bytes(&mut buf, 2, value.as_bytes());
    }
    buf.freeze()
}

/// The value a request's descriptors carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// The hot key, over its limit (attack traffic).
    Hot,
    /// One of the spread values, `v{n}`.
    Key(u64),
}

/// Bytes of a length-delimited field of `len` bytes with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_tag_len(buf: &mut BytesMut, field: u8, len: usize) {
    buf.put_u8(field << 3 | 2);
    let mut v = len as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_bytes(buf: &mut BytesMut, field: u8, bytes: &[u8]) {
    put_tag_len(buf, field, bytes.len());
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate::pb::RateLimitRequest;

    #[test]
    fn encodes_any_entries_as_prost_decodes_them() {
        let frame = encode_entries("soak", &[("sec", "v7"), ("min", "v7"), ("free", "")]);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!((frame[0], len), (0, frame.len() - 5));
        let request = RateLimitRequest::decode(&frame[5..]).expect("valid protobuf");
        assert_eq!(request.domain, "soak");
        let entries: Vec<(&str, &str)> = request
            .descriptors
            .iter()
            .map(|d| (d.entries[0].key.as_str(), d.entries[0].value.as_str()))
            .collect();
        assert_eq!(entries, [("sec", "v7"), ("min", "v7"), ("free", "")]);
    }

    #[test]
    fn encodes_what_prost_decodes() {
        let mut buf = BytesMut::new();
        for (descriptors, value) in [
            (1, Value::Key(7)),
            (3, Value::Key(123_456)),
            (2, Value::Hot),
        ] {
            let shape = RequestShape {
                domain: "bench",
                descriptors,
            };
            let frame = encode_request(&mut buf, &shape, value);
            assert_eq!(frame[0], 0);
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            assert_eq!(len, frame.len() - 5);
            let request = RateLimitRequest::decode(&frame[5..]).expect("valid protobuf");
            assert_eq!(request.domain, "bench");
            assert_eq!(request.descriptors.len(), descriptors);
            for (d, descriptor) in request.descriptors.iter().enumerate() {
                let entry = &descriptor.entries[0];
                match value {
                    Value::Hot => {
                        assert_eq!((entry.key.as_str(), entry.value.as_str()), ("hot", "hot"))
                    }
                    Value::Key(n) => {
                        assert_eq!(entry.key, format!("k{d}"));
                        assert_eq!(entry.value, format!("v{n}"));
                    }
                }
            }
        }
    }
}
