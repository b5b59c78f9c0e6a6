//! The local ingress balances over the replicas of a service, and a replica
//! that is down costs a request without a body nothing.

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
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A replica that answers every request with its name.
async fn spawn_replica(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |request: Request<Incoming>| async move {
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
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

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn ingress(upstreams: HashMap<String, Vec<SocketAddr>>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(devstack::ingress::serve(listener, upstreams, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn send(ingress: SocketAddr, method: Method, body: &'static str) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{ingress}/api/tickets"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_take_turns_over_the_replicas() {
    let one = spawn_replica("one").await;
    let two = spawn_replica("two").await;
    let (ingress, _stop) = ingress(HashMap::from([("tickets".to_owned(), vec![one, two])])).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (status, body) = send(ingress, Method::GET, "").await;
        assert_eq!(status, StatusCode::OK);
        answers.push(body);
    }
    assert_eq!(answers, ["one", "two", "one", "two"]);
}

#[tokio::test]
async fn a_dead_replica_is_skipped_and_a_request_without_a_body_never_sees_it() {
    let live = spawn_replica("live").await;
    let (ingress, _stop) = ingress(HashMap::from([(
        "tickets".to_owned(),
        vec![dead_address(), live],
    )]))
    .await;
    for _ in 0..6 {
        assert_eq!(
            send(ingress, Method::GET, "").await,
            (StatusCode::OK, "live".to_owned()),
            "a GET goes to the live replica, even when the dead one is its turn"
        );
    }
    // A body is consumed by the attempt: at most the first request that meets
    // the dead replica fails (502); after that the replica is skipped.
    let mut failed = 0;
    for _ in 0..6 {
        let (status, body) = send(ingress, Method::POST, "{\"price\":5}").await;
        match status {
            StatusCode::OK => assert_eq!(body, "live"),
            StatusCode::BAD_GATEWAY => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        failed <= 1,
        "{failed} POSTs failed: the dead replica was not skipped"
    );
}

#[tokio::test]
async fn every_replica_down_is_a_502() {
    let (ingress, _stop) = ingress(HashMap::from([(
        "tickets".to_owned(),
        vec![dead_address(), dead_address()],
    )]))
    .await;
    let (status, body) = send(ingress, Method::GET, "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("Service unavailable"), "{body}");
}
