//! Readiness probes that speak just enough of each protocol.
//!
//! An open TCP port is not readiness: a server may accept before it can answer
//! (JetStream still recovering, a python server still importing). So each probe
//! does one real round trip: NATS `PING`/`PONG` and the monitoring port's
//! `/healthz`, Redis `PING`, a MongoDB `OP_MSG {ping: 1}` (a few lines of
//! hand-written BSON, to avoid pulling the driver into the launcher), and plain
//! HTTP `GET` for the Stripe fake and the services' `/readyz`.
//!
//! [`wait_ready`] retries a probe until it passes, failing early (with the tail
//! of the process's log) if the process exits meanwhile.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::Process;

/// Upper bound for a single probe attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a port [`free_port`] handed out is not handed out again.
const GIVEN_FOR: Duration = Duration::from_secs(120);

/// The ports [`free_port`] handed out lately, by this process.
static GIVEN: std::sync::Mutex<std::collections::VecDeque<(u16, Instant)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it), not
/// one this process handed out in the last [`GIVEN_FOR`].
///
/// The port is free when it is read, but its server binds it only a moment
/// later, and the kernel may give the same port to the next `bind(0)` in the
/// meantime: two services of one fleet, or of two tests running side by
/// side, once got the same port — one failed to bind and exited, and the
/// other answered the first one's readiness probe and its requests.
pub fn free_port() -> anyhow::Result<u16> {
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    while given
        .front()
        .is_some_and(|(_, at)| now.duration_since(*at) > GIVEN_FOR)
    {
        given.pop_front();
    }
    for _ in 0..256 {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("failed to find a free port")?;
        let port = listener.local_addr()?.port();
        if given.iter().all(|(taken, _)| *taken != port) {
            given.push_back((port, now));
            return Ok(port);
        }
    }
    bail!("no free port that was not handed out lately")
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Retries `probe` until it succeeds or `timeout` passes. Fails at once, with the
/// tail of its log, if `process` exits in the meantime.
pub async fn wait_ready<F, Fut>(
    process: &Process,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(25);
    loop {
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited during startup ({status}); last lines of its log:\n{}",
                process.name(),
                process.log_tail_block(30)
            );
        }
        let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => anyhow!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if started.elapsed() >= timeout {
            bail!(
                "{} is not ready after {timeout:?} ({what}: {error:#}); last lines of its log:\n{}",
                process.name(),
                process.log_tail_block(30)
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The port accepts TCP connections.
pub async fn tcp(addr: SocketAddr) -> anyhow::Result<()> {
    TcpStream::connect(addr).await?;
    Ok(())
}

/// `GET path` over HTTP/1.1; returns the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {status_line:?}"))?;
    Ok(code)
}

/// `GET path` answers 200.
pub async fn http_ok(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let status = http_status(addr, path).await?;
    ensure!(status == 200, "GET {path} answered {status}");
    Ok(())
}

/// The NATS server answers `PING` with `PONG`.
pub async fn nats(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    ensure!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    stream
        .get_mut()
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await?;
    line.clear();
    stream.read_line(&mut line).await?;
    ensure!(line.starts_with("PONG"), "expected PONG, got {line:?}");
    Ok(())
}

/// Redis answers `PING` with `+PONG`.
pub async fn redis(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    stream.get_mut().write_all(b"PING\r\n").await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    // `-LOADING` while it replays its append-only file.
    ensure!(line.starts_with("+PONG"), "expected +PONG, got {line:?}");
    Ok(())
}

/// A MongoDB-wire server answers `{ping: 1}` on `admin` with `ok: 1`.
pub async fn mongo(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&bson::ping_op_msg(1)).await?;

    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await?;
    let length = bson::read_i32(&header, 0)?;
    let op_code = bson::read_i32(&header, 12)?;
    ensure!(op_code == bson::OP_MSG, "unexpected reply opcode {op_code}");
    let length = usize::try_from(length)
        .ok()
        .filter(|len| (21..=16 * 1024 * 1024).contains(len))
        .with_context(|| format!("bad reply length {length}"))?;
    let mut body = vec![0u8; length - 16];
    stream.read_exact(&mut body).await?;
    // flagBits (4 bytes), section kind 0, then the reply document.
    ensure!(body.get(4) == Some(&0), "unexpected OP_MSG section kind");
    let ok = bson::top_level_ok(&body[5..])?;
    ensure!(ok, "ping answered without ok: 1");
    Ok(())
}

/// The few bytes of BSON and OP_MSG the Mongo probe needs.
mod bson {
    use anyhow::{Context, bail};

    pub const OP_MSG: i32 = 2013;

    /// An OP_MSG carrying `{ping: 1, $db: "admin"}`.
    pub fn ping_op_msg(request_id: i32) -> Vec<u8> {
        let mut doc = Vec::new();
        doc.extend_from_slice(&[0; 4]); // length, patched below
        doc.push(0x10); // int32
        doc.extend_from_slice(b"ping\0");
        doc.extend_from_slice(&1i32.to_le_bytes());
        doc.push(0x02); // string
        doc.extend_from_slice(b"$db\0");
        doc.extend_from_slice(&6i32.to_le_bytes()); // "admin" + NUL
        doc.extend_from_slice(b"admin\0");
        doc.push(0);
        let doc_len = doc.len() as i32;
        doc[..4].copy_from_slice(&doc_len.to_le_bytes());

        let mut msg = Vec::with_capacity(16 + 5 + doc.len());
        let total = (16 + 4 + 1 + doc.len()) as i32;
        msg.extend_from_slice(&total.to_le_bytes());
        msg.extend_from_slice(&request_id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
        msg.extend_from_slice(&OP_MSG.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
        msg.push(0); // section kind 0: body
        msg.extend_from_slice(&doc);
        msg
    }

    pub fn read_i32(bytes: &[u8], at: usize) -> anyhow::Result<i32> {
        let raw: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|slice| slice.try_into().ok())
            .context("truncated message")?;
        Ok(i32::from_le_bytes(raw))
    }

    /// Whether the document's top-level `ok` is 1 (double, int32 or int64).
    pub fn top_level_ok(doc: &[u8]) -> anyhow::Result<bool> {
        let len = usize::try_from(read_i32(doc, 0)?).context("bad document length")?;
        let doc = doc.get(..len).context("truncated document")?;
        let mut at = 4;
        while at < len.saturating_sub(1) {
            let kind = doc[at];
            at += 1;
            let name_end = doc[at..]
                .iter()
                .position(|&b| b == 0)
                .context("unterminated field name")?;
            let name = &doc[at..at + name_end];
            at += name_end + 1;
            let value = &doc[at..];
            if name == b"ok" {
                return Ok(match kind {
                    0x01 => value
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .is_some_and(|b| f64::from_le_bytes(b) == 1.0),
                    0x10 => read_i32(value, 0)? == 1,
                    0x12 => value
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .is_some_and(|b| i64::from_le_bytes(b) == 1),
                    _ => false,
                });
            }
            at += match kind {
                0x01 | 0x09 | 0x11 | 0x12 => 8,
                0x02 | 0x0D | 0x0E => 4 + usize::try_from(read_i32(value, 0)?)?,
                0x03 | 0x04 => usize::try_from(read_i32(value, 0)?)?,
                0x05 => 5 + usize::try_from(read_i32(value, 0)?)?,
                0x07 => 12,
                0x08 => 1,
                0x0A | 0x06 | 0x7F | 0xFF => 0,
                0x10 => 4,
                0x13 => 16,
                other => bail!("unsupported BSON type {other:#x} before `ok`"),
            };
        }
        Ok(false)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_ok_after_other_fields() {
            // {"n": "x", "ok": 1.0}
            let mut doc = vec![0, 0, 0, 0];
            doc.extend_from_slice(&[0x02, b'n', 0, 2, 0, 0, 0, b'x', 0]);
            doc.extend_from_slice(&[0x01, b'o', b'k', 0]);
            doc.extend_from_slice(&1.0f64.to_le_bytes());
            doc.push(0);
            let len = doc.len() as i32;
            doc[..4].copy_from_slice(&len.to_le_bytes());
            assert!(top_level_ok(&doc).unwrap());
        }

        #[test]
        fn ping_message_is_well_formed() {
            let msg = ping_op_msg(7);
            assert_eq!(read_i32(&msg, 0).unwrap() as usize, msg.len());
            assert_eq!(read_i32(&msg, 12).unwrap(), OP_MSG);
            let doc = &msg[21..];
            assert_eq!(read_i32(doc, 0).unwrap() as usize, doc.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_a_port_twice_in_a_row() {
        // Released at once, as a fleet's ports are until their services
        // bind them: the kernel gives some of them again within a few
        // hundred `bind(0)`s.
        let ports: Vec<u16> = (0..400).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::HashSet<&u16> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
