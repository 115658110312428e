//! A minimal HTTP/1.1 client for the tests (one request per connection; over TLS through
//! [`super::tls::TlsClient::http`]).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request and returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body).await
}

/// Sends one request with extra headers and returns (status, body).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// Sends one request; returns (status, response headers with lowercase names, body).
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let answer = try_http(addr, method, path, headers, body).await;
    answer.unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// The status of a GET of `path`, or `None` when the connection fails or the answer is no HTTP.
pub async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let answer = try_http(addr, "GET", path, &[], "").await;
    answer.ok().map(|(status, _, _)| status)
}

/// [`http_full`], with a failed connection or an answer that is no HTTP as an error.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Vec<(String, String)>, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    exchange(stream, addr, method, path, headers, body).await
}

/// One request on `stream` (a connection to `addr`, plain or TLS) and its answer: (status,
/// response headers with lowercase names, body), or why there was none.
pub async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Vec<(String, String)>, String), String> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3)?.parse().ok());
    let status = status.ok_or_else(|| format!("no HTTP status line in {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, headers, body))
}

/// The payload of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// Calls the admin API with `key`: (status, the body as JSON, or as a JSON string when it is
/// not JSON).
pub async fn admin(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, text) = http_with(addr, method, path, &[("X-Admin-Key", key)], body).await;
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}
