//! The local ingress proxies to the right service, passes requests and
//! responses through intact, and answers 502/503 for services that are down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A stand-in service: echoes what it received as JSON and sets two cookies.
async fn spawn_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |request: Request<Incoming>| async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let header = |key: &str| {
                    let values: Vec<String> = parts
                        .headers
                        .get_all(key)
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect();
                    json!(values)
                };
                let echo = json!({
                    "service": name,
                    "method": parts.method.as_str(),
                    "target": parts.uri.path_and_query().map(|pq| pq.as_str()),
                    "host": header("host"),
                    "cookie": header("cookie"),
                    "xForwardedFor": header("x-forwarded-for"),
                    "xForwardedProto": header("x-forwarded-proto"),
                    "xForwardedHost": header("x-forwarded-host"),
                    "xRequestId": header("x-request-id"),
                    "connectionOption": header("x-hop"),
                    "bodyLen": body.len(),
                    "bodyHead": String::from_utf8_lossy(&body[..body.len().min(32)]),
                });
                let response = Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .header("set-cookie", "session=abc; Path=/; HttpOnly")
                    .header("set-cookie", "other=xyz; Path=/")
                    .body(Full::new(Bytes::from(echo.to_string())))
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Starts the ingress in front of `upstreams`; dropping the sender stops it.
async fn spawn_ingress(
    upstreams: HashMap<String, SocketAddr>,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(devstack::ingress::serve(listener, upstreams, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn full_fleet_of_fakes() -> HashMap<String, SocketAddr> {
    let mut upstreams = HashMap::new();
    for name in ["auth", "tickets", "orders", "payments", "client"] {
        upstreams.insert(name.to_owned(), spawn_upstream(name).await);
    }
    upstreams
}

#[tokio::test]
async fn routes_each_path_to_its_service() {
    let (ingress, _stop) = spawn_ingress(full_fleet_of_fakes().await).await;
    let cases = [
        ("/api/users/currentuser", "auth"),
        ("/api/tickets", "tickets"),
        ("/api/tickets/abc?x=1", "tickets"),
        ("/api/orders/1", "orders"),
        ("/api/payments", "payments"),
        ("/api/usersX", "auth"), // a prefix match, as behind ingress-nginx
        ("/api/userx", "client"),
        ("/", "client"),
        ("/tickets/new", "client"),
    ];
    for (path, service) in cases {
        let request = Request::get(format!("http://{ingress}{path}"))
            .body(Full::default())
            .unwrap();
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{path}");
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["service"], service, "{path}");
        assert_eq!(echo["target"], path, "{path}");
    }
}

#[tokio::test]
async fn passes_method_headers_cookies_and_body_through() {
    let (ingress, _stop) = spawn_ingress(full_fleet_of_fakes().await).await;
    let body = "x".repeat(3 * 1024 * 1024); // bigger than any buffer: streamed
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{ingress}/api/tickets/42?expand=1&a=%20b"))
        .header("host", "ticketing.dev")
        .header("cookie", "session=eyJqd3QiOiJ4In0=")
        .header("content-type", "application/json")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, headers, response_body) = send(request).await;

    assert_eq!(status, StatusCode::CREATED);
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        ["session=abc; Path=/; HttpOnly", "other=xyz; Path=/"]
    );
    assert_eq!(headers["content-type"], "application/json");

    let echo: Value = serde_json::from_slice(&response_body).unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/api/tickets/42?expand=1&a=%20b");
    assert_eq!(echo["host"], json!(["ticketing.dev"]));
    assert_eq!(echo["cookie"], json!(["session=eyJqd3QiOiJ4In0="]));
    assert_eq!(
        echo["xForwardedFor"],
        json!(["127.0.0.1"]),
        "set, not appended to a forged value"
    );
    assert_eq!(echo["xForwardedProto"], json!(["http"]));
    assert_eq!(echo["xForwardedHost"], json!(["ticketing.dev"]));
    assert_eq!(echo["xRequestId"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        echo["connectionOption"],
        json!([]),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(echo["bodyLen"], 3 * 1024 * 1024);
    assert_eq!(echo["bodyHead"], "x".repeat(32));
}

#[tokio::test]
async fn keeps_a_request_id_the_client_sent() {
    let (ingress, _stop) = spawn_ingress(full_fleet_of_fakes().await).await;
    let request = Request::get(format!("http://{ingress}/api/orders"))
        .header("x-request-id", "req-123")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = send(request).await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["xRequestId"], json!(["req-123"]));
}

#[tokio::test]
async fn answers_502_when_the_service_is_down() {
    // A port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let upstreams = HashMap::from([("auth".to_owned(), dead)]);
    let (ingress, _stop) = spawn_ingress(upstreams).await;

    let request = Request::post(format!("http://{ingress}/api/users/signin"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"errors": [{"message": "Service unavailable"}]})
    );
}

#[tokio::test]
async fn answers_503_for_a_service_without_upstream() {
    let (ingress, _stop) = spawn_ingress(HashMap::new()).await;
    let request = Request::get(format!("http://{ingress}/"))
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"errors": [{"message": "Service unavailable"}]})
    );
}

#[tokio::test]
async fn reuses_upstream_connections_across_requests() {
    // Count the upstream's accepted connections.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accepted_tx.send(()).unwrap();
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let (ingress, _stop) = spawn_ingress(HashMap::from([("tickets".to_owned(), upstream)])).await;

    let client = client();
    for _ in 0..20 {
        let request = Request::get(format!("http://{ingress}/api/tickets"))
            .body(Full::default())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    let mut connections = 0;
    while accepted_rx.try_recv().is_ok() {
        connections += 1;
    }
    assert_eq!(
        connections, 1,
        "sequential requests share one pooled upstream connection"
    );
}

#[tokio::test]
async fn stops_when_the_shutdown_future_resolves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(devstack::ingress::serve(
        listener,
        HashMap::<String, SocketAddr>::new(),
        async move {
            let _ = stopped.await;
        },
    ));
    stop.send(()).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("serve returns promptly after shutdown")
        .unwrap();
    assert!(result.is_ok());
}

async fn spawn_ingress_with(
    upstreams: HashMap<String, SocketAddr>,
    options: devstack::ingress::IngressOptions,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(devstack::ingress::serve_with(
        listener,
        upstreams,
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

#[tokio::test]
async fn past_max_connections_a_new_connection_gets_a_503_and_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = devstack::ingress::IngressOptions {
        max_connections: 1,
        ..Default::default()
    };
    let (ingress, _stop) = spawn_ingress_with(full_fleet_of_fakes().await, options).await;
    // One connection holds the only place (idle, inside its header time).
    let _held = tokio::net::TcpStream::connect(ingress).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut refused = tokio::net::TcpStream::connect(ingress).await.unwrap();
    let _ = refused
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        refused.read_to_string(&mut answer),
    )
    .await
    .expect("the refusal came and the connection closed")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap(),
        json!({"errors": [{"message": "Too many connections, try again later"}]})
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let options = devstack::ingress::IngressOptions {
        trusted_proxies: "127.0.0.1".parse().unwrap(),
        ..Default::default()
    };
    let (ingress, _stop) = spawn_ingress_with(full_fleet_of_fakes().await, options).await;
    let request = Request::get(format!("http://{ingress}/api/users/currentuser"))
        .header("x-forwarded-for", "203.0.113.5, 127.0.0.1")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = send(request).await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["xForwardedFor"], json!(["203.0.113.5"]));

    // Trusting nobody (the default), the peer is the client, whatever it says.
    let (ingress, _stop) = spawn_ingress(full_fleet_of_fakes().await).await;
    let request = Request::get(format!("http://{ingress}/api/users/currentuser"))
        .header("x-forwarded-for", "203.0.113.5")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = send(request).await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["xForwardedFor"], json!(["127.0.0.1"]));
}
