//! The edge under pressure, through the ingress of a whole fleet: the rate
//! limit per client address, a thousand connections at once, and clients
//! that send their headers a byte a second. Loopback only; every load is
//! bounded in count and in time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use devstack::{ingress::IngressOptions, ratelimit::RateLimit};
use fleet_tests::Shop;
use testkit::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A cheap route: no database, no hashing.
const CHEAP: &str = "/api/users/currentuser";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn assert_retry_after(reply: &Reply) {
    let wait: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(wait >= 1, "Retry-After {wait}");
}

#[tokio::test]
async fn a_burst_from_one_address_is_limited_while_another_address_is_served() {
    let shop = Shop::open_with(
        &[],
        IngressOptions {
            rate_limit: Some("5/s,burst=10".parse::<RateLimit>().unwrap()),
            trusted_proxies: "127.0.0.9".parse().unwrap(),
            ..IngressOptions::default()
        },
    )
    .await;
    let noisy = shop.client_from(ip("127.0.0.2"));
    let replies = futures::future::join_all((0..40).map(|_| noisy.get(CHEAP, None))).await;
    let served = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(served + limited.len(), 40, "only 200s and 429s");
    // The burst, and what 5/s earns while the burst is answered.
    assert!((10..=20).contains(&served), "{served} served");
    for reply in &limited {
        reply.assert_error(429, "Too many requests, try again later");
        assert_retry_after(reply);
    }

    // Another address has a bucket of its own.
    let quiet = shop.client_from(ip("127.0.0.3"));
    quiet.get(CHEAP, None).await.assert_status(200);

    // X-Forwarded-For counts only from the trusted proxy: from it, the
    // forwarded client is the noisy one (limited); from anyone else the
    // header is ignored and the peer is counted (served).
    let forwarded_get = |source: &str| {
        let client = shop.client_from(ip(source));
        async move {
            let response = client
                .http
                .get(format!("{}{CHEAP}", client.base_url))
                .header("x-forwarded-for", "127.0.0.2")
                .send()
                .await
                .expect("request failed");
            Reply::read(response).await
        }
    };
    forwarded_get("127.0.0.9")
        .await
        .assert_error(429, "Too many requests, try again later");
    forwarded_get("127.0.0.5").await.assert_status(200);

    // The noisy address is served again once it has waited.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    noisy.get(CHEAP, None).await.assert_status(200);
    shop.close().await;
}

/// One raw HTTP/1.1 request on a connection of its own, from `source`:
/// the status and the headers, or why there was none.
async fn raw_get(ingress: SocketAddr, source: IpAddr, path: &str) -> Result<(u16, String), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind((source, 0).into()).map_err(|e| e.to_string())?;
    let mut stream = socket
        .connect(ingress)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: ticketing.dev\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok((status, text))
}

/// Resident set and peak (KiB) of a process.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A thousand connections at once, then two hundred clients dribbling
/// their headers: answers, not hangs, and a normal client still served.
/// (One fleet for both: the two loads are not run at the same time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_and_slow_header_senders_get_answers_not_hangs() {
    let deadline = Duration::from_secs(5);
    let shop = Shop::open_with(
        &[
            // A tiny bound: whatever crosses it must be a clean 503, counted
            // in /metrics (none may be seen: auth answers this in microseconds).
            ("MAX_IN_FLIGHT_REQUESTS", "2"),
            ("REQUEST_TIMEOUT_SECONDS", "5"),
        ],
        IngressOptions {
            // 250 connections per address within the deadline (7 s) can
            // earn at most 100 + 7 × 20 = 240 tokens: some are always 429.
            rate_limit: Some("20/s,burst=100".parse::<RateLimit>().unwrap()),
            header_timeout: Duration::from_secs(2),
            ..IngressOptions::default()
        },
    )
    .await;
    let ingress = shop.address();
    let auth_pid = shop.stack.fleet().pid("auth").expect("auth runs");
    let (auth_rss_before, _) = memory_kib(auth_pid);

    // 1. A thousand connections at once, each with one request.
    let started = Instant::now();
    let answers = futures::future::join_all((0..1000u32).map(|n| {
        // Four clients (127.0.0.10–13) of 250 connections each: some over
        // their edge limit, the rest to auth.
        let source = IpAddr::from([127, 0, 0, 10 + (n % 4) as u8]);
        async move {
            let began = Instant::now();
            let answer = tokio::time::timeout(
                deadline + Duration::from_secs(5),
                raw_get(ingress, source, CHEAP),
            )
            .await;
            (answer, began.elapsed())
        }
    }))
    .await;
    let took = started.elapsed();
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let mut slowest = Duration::ZERO;
    for (answer, elapsed) in &answers {
        let (status, text) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => panic!("a connection got no answer: {why}"),
            Err(_) => panic!("a connection hung for {elapsed:?}"),
        };
        assert!(
            matches!(status, 200 | 429 | 503),
            "status {status}: {text:.400}"
        );
        if *status != 200 {
            let lower = text.to_ascii_lowercase();
            assert!(
                lower.contains("retry-after: "),
                "{status} without Retry-After: {text:.400}"
            );
            assert!(
                text.contains(r#"{"errors":[{"message":"#),
                "{status} not in the errors shape: {text:.400}"
            );
        }
        *counts.entry(*status).or_default() += 1;
        slowest = slowest.max(*elapsed);
    }
    let (auth_rss_after, auth_peak) = memory_kib(auth_pid);
    eprintln!(
        "1000 connections in {took:?}: {counts:?}, slowest {slowest:?}; auth resident {auth_rss_before} → {auth_rss_after} KiB, peak {auth_peak} KiB"
    );
    assert!(
        counts.get(&200).copied().unwrap_or(0) > 0,
        "nothing served: {counts:?}"
    );
    assert!(
        counts.get(&429).copied().unwrap_or(0) >= 40,
        "the edge limit did not hold: {counts:?}"
    );
    assert!(
        slowest < deadline + Duration::from_secs(2),
        "slowest answer {slowest:?}"
    );
    assert!(auth_peak < 128 * 1024, "auth peaked at {auth_peak} KiB");
    // Every 503 from auth is counted in its /metrics.
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        shop.stack.fleet().addr("auth").unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let shed = common::metrics::sample(
        &metrics,
        "http_requests_rejected_total",
        &[("reason", "overload")],
    )
    .unwrap_or(0.0);
    assert_eq!(
        shed as usize,
        counts.get(&503).copied().unwrap_or(0),
        "503s seen vs counted by auth"
    );
    assert_eq!(
        common::metrics::sample(&metrics, "http_max_in_flight_requests", &[]),
        Some(2.0)
    );

    // 2. Two hundred connections sending their headers a byte a second.
    let slow_started = Instant::now();
    let slow: Vec<_> = (0..200u32)
        .map(|n| {
            let source = IpAddr::from([127, 0, 1, 1 + (n % 200) as u8]);
            tokio::spawn(dribble(ingress, source))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let normal = shop.client_from(ip("127.0.0.250"));
    for _ in 0..3 {
        let began = Instant::now();
        normal.get(CHEAP, None).await.assert_status(200);
        let waited = began.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "a normal client waited {waited:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And the ingress hangs up on each of them once its header time is up.
    for handle in slow {
        let (closed_after, sent) = handle.await.expect("dribbler panicked");
        let closed_after = closed_after.expect("a slow client was never cut off");
        assert!(
            closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(5),
            "cut off after {closed_after:?} ({sent} bytes sent)"
        );
    }
    eprintln!(
        "200 slow-header connections cut off within {:?}",
        slow_started.elapsed()
    );
    shop.close().await;
}

/// Sends a request's headers a byte a second until the ingress hangs up;
/// how long that took (`None`: not within 8 s) and how many bytes went out.
async fn dribble(ingress: SocketAddr, source: IpAddr) -> (Option<Duration>, usize) {
    let began = Instant::now();
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind((source, 0).into()).expect("bind");
    let mut stream: TcpStream = socket.connect(ingress).await.expect("connect");
    let request = b"GET /api/users/currentuser HTTP/1.1\r\nHost: ticketing.dev\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    let mut buffer = [0u8; 512];
    while began.elapsed() < Duration::from_secs(8) && sent < request.len() {
        if stream.write_all(&request[sent..=sent]).await.is_err() {
            return (Some(began.elapsed()), sent);
        }
        sent += 1;
        // Anything read — an answer, the end, an error — means it hung up.
        if let Ok(read) =
            tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await
        {
            let _ = read;
            return (Some(began.elapsed()), sent);
        }
    }
    (None, sent)
}
