//! The common layers on a real socket: a body refused before its end is still
//! read (and thrown away), so the client hears the refusal.

use std::time::Duration;

use axum::{Router, routing::post};
use common::server::{self, BODY_LIMIT};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_body_refused_with_413_is_drained_so_the_client_can_finish_sending_it() {
    let app = server::finish(Router::new().route("/upload", post(|| async { "never" })));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));

    let total = 2 * 1024 * 1024;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let piece = vec![b'x'; BODY_LIMIT];
    stream.write_all(&piece).await.unwrap();

    // The answer comes before the body is complete...
    let mut response = vec![0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("no answer before the end of the body")
        .unwrap();
    let response = String::from_utf8_lossy(&response[..read]).into_owned();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#"{"errors":[{"message":"Request body is too large"}]}"#),
        "{response}"
    );

    // ...and the server keeps reading: the rest goes out without a reset.
    let mut sent = BODY_LIMIT;
    while sent < total {
        let n = piece.len().min(total - sent);
        stream
            .write_all(&piece[..n])
            .await
            .unwrap_or_else(|err| panic!("the server stopped reading after {sent} bytes: {err}"));
        sent += n;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
}
