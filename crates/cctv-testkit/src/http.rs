//! A minimal HTTP/1.0 client over `std::net::TcpStream`, enough for ClickHouse.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// How long connecting to a local server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// Status code, e.g. 200.
    pub(crate) status: u16,
    /// Body, decoded lossily as UTF-8.
    pub(crate) body: String,
}

/// Sends one request to 127.0.0.1:`port` and reads the whole response.
///
/// HTTP/1.0 with `Connection: close` means the server closes after the body, so no
/// chunked decoding or keep-alive handling is needed.
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    read_timeout: Duration,
) -> io::Result<HttpResponse> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(read_timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Splits a raw response into status code and body.
fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let header_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("response has no end of headers"))?;
    let head = String::from_utf8_lossy(raw.get(..header_end).unwrap_or_default());
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(invalid("response does not start with HTTP/"));
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("response has no numeric status code"))?;
    let body_bytes = raw.get(header_end + 4..).unwrap_or_default();
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(body_bytes).into_owned(),
    })
}

/// An `InvalidData` error with a message.
fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() -> io::Result<()> {
        let response = parse_response(b"HTTP/1.0 404 Not Found\r\nX-A: b\r\n\r\nmissing\n")?;
        assert_eq!(response.status, 404);
        assert_eq!(response.body, "missing\n");
        Ok(())
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"hello").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}
