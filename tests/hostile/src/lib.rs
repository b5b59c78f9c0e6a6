//! Hostile input, through the ingress of one whole fleet: every route of every
//! API service refuses what no honest client sends — bodies over the limit,
//! JSON nested ten thousand deep, invalid UTF-8, ids that are not ids, prices
//! that are not prices, forged, expired and unsigned tokens — with a 4xx in
//! the fleet's `{"errors":[…]}` shape, never a 5xx.
//!
//! One [`Fleet`] serves every test of the binary: started once, on a runtime
//! of its own that outlives each test's, with the test kit's `JWT_KEY` so the
//! tests can sign tokens (expired ones, say) the fleet would otherwise
//! accept. Requests go out through [`send`], a deliberately small HTTP/1.1
//! client over a raw socket, so that a test can send what `reqwest` would
//! refuse to build: bytes that are not UTF-8, a `Content-Length` the body
//! does not match, chunked bodies without end.

// A test kit: a set-up that cannot be done is the test failing, so it
// unwraps and expects (the workspace denies both everywhere else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::OnceLock, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Every route the fleet serves through the ingress: method, path (`{id}` an
/// id), whether it reads a JSON body, whether it needs a signed-in user.
pub const ROUTES: [Route; 13] = [
    Route::new("POST", "/api/users/signup", Body::Json, Auth::None),
    Route::new("POST", "/api/users/signin", Body::Json, Auth::None),
    Route::new("POST", "/api/users/signout", Body::None, Auth::None),
    Route::new("GET", "/api/users/currentuser", Body::None, Auth::Optional),
    Route::new("GET", "/api/tickets", Body::None, Auth::None),
    Route::new("POST", "/api/tickets", Body::Json, Auth::Required),
    Route::new("GET", "/api/tickets/{id}", Body::None, Auth::None),
    Route::new("PUT", "/api/tickets/{id}", Body::Json, Auth::Required),
    Route::new("GET", "/api/orders", Body::None, Auth::Required),
    Route::new("POST", "/api/orders", Body::Json, Auth::Required),
    Route::new("GET", "/api/orders/{id}", Body::None, Auth::Required),
    Route::new("DELETE", "/api/orders/{id}", Body::None, Auth::Required),
    Route::new("POST", "/api/payments", Body::Json, Auth::Required),
];

/// One route of [`ROUTES`].
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub body: Body,
    pub auth: Auth,
}

/// Whether a route reads a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
}

/// Whether a route needs a signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Optional,
    Required,
}

impl Route {
    const fn new(method: &'static str, path: &'static str, body: Body, auth: Auth) -> Self {
        Self {
            method,
            path,
            body,
            auth,
        }
    }

    /// The path with `{id}` replaced by `id`.
    pub fn with_id(&self, id: &str) -> String {
        self.path.replace("{id}", id)
    }

    /// The path with `{id}` replaced by an id that names nothing.
    pub fn target(&self) -> String {
        self.with_id(&mongodb::bson::oid::ObjectId::new().to_hex())
    }

    /// A body this route would accept, were the request otherwise valid.
    pub fn valid_body(&self) -> Value {
        match self.path {
            "/api/users/signup" | "/api/users/signin" => {
                json!({"email": format!("{}@test.com", testkit::unique_name("hostile")), "password": "password1"})
            }
            "/api/tickets" | "/api/tickets/{id}" => json!({"title": "concert", "price": 10}),
            "/api/orders" => json!({"ticketId": mongodb::bson::oid::ObjectId::new().to_hex()}),
            "/api/payments" => {
                json!({"token": "tok_visa", "orderId": mongodb::bson::oid::ObjectId::new().to_hex()})
            }
            _ => json!({}),
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The shared fleet and what the tests need from it.
#[derive(Debug)]
pub struct Fleet {
    /// The ingress, `127.0.0.1:PORT`.
    pub address: String,
    /// A `Cookie` header value of a signed-up user.
    pub cookie: String,
    /// The same user's JWT, for `Authorization: Bearer`.
    pub token: String,
    /// A ticket that user listed.
    pub ticket_id: String,
}

static FLEET: OnceLock<Fleet> = OnceLock::new();

/// The fleet of this test process, started by the first test that asks.
pub fn fleet() -> &'static Fleet {
    FLEET.get_or_init(start)
}

fn start() -> Fleet {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hostile-fleet".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("hostile: failed to build the fleet's runtime");
            runtime.block_on(async move {
                let env = [
                    ("JWT_KEY", testkit::JWT_KEY),
                    ("EXPIRATION_WINDOW_SECONDS", "600"),
                ];
                match devstack::Stack::start(
                    &["auth", "tickets", "orders", "payments", "expiration"],
                    &env,
                )
                .await
                {
                    Ok(stack) => {
                        let fleet = prepare(stack.base_url()).await;
                        let _ = tx.send(Ok(fleet));
                        // The ingress runs on this runtime: keep it (and the
                        // services, stopped by their watchdogs when the test
                        // process exits) alive as long as the tests.
                        std::future::pending::<()>().await;
                        drop(stack);
                    }
                    Err(err) => {
                        let _ = tx.send(Err(format!("{err:#}")));
                    }
                }
            });
        })
        .expect("hostile: failed to spawn the fleet's thread");
    match rx.recv() {
        Ok(Ok(fleet)) => fleet,
        Ok(Err(err)) => panic!("hostile: the fleet did not start: {err}"),
        Err(_) => panic!("hostile: the fleet's thread died"),
    }
}

/// Signs up a user through the ingress and lists a ticket (with the kit's
/// client: the set-up is not what is under attack).
async fn prepare(base_url: &str) -> Fleet {
    let api = testkit::Api::new(base_url);
    let email = format!("{}@test.com", testkit::unique_name("hostile"));
    let user = api.signup(&email).await.expect("sign-up");
    let (_, value) = user.cookie.split_once('=').expect("a name=value cookie");
    let token =
        common::session::decode_cookie_value(value).expect("the session cookie holds a JWT");
    let ticket = api.create_ticket(&user, "hostile", 10.0).await;
    Fleet {
        address: base_url.trim_start_matches("http://").to_owned(),
        cookie: user.cookie,
        token,
        ticket_id: ticket.expect("listing a ticket").id,
    }
}

/// A request as bytes go on the wire.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: any bytes.
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Send the body chunked (no `Content-Length`) instead.
    pub chunked: bool,
    /// Declare this `Content-Length` instead of the body's.
    pub declared_length: Option<usize>,
}

impl Request {
    pub fn new(method: &str, target: impl Into<Vec<u8>>) -> Self {
        Self {
            method: method.to_owned(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            declared_length: None,
        }
    }

    /// A request with a JSON body.
    pub fn json(method: &str, target: &str, body: &Value) -> Self {
        Self::new(method, target).raw_json(body.to_string())
    }

    /// A request whose body is `body`, labelled JSON whatever it is.
    pub fn raw_json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.header("content-type", "application/json")
    }

    /// A body with no content type of its own.
    pub fn raw_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Signed in as the fleet's user through the `session` cookie.
    pub fn signed_in(self) -> Self {
        let cookie = fleet().cookie.clone();
        self.header("cookie", cookie)
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut head = Vec::new();
        head.extend_from_slice(self.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(&self.target);
        head.extend_from_slice(
            format!(" HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n").as_bytes(),
        );
        for (name, value) in &self.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in self.body.chunks(8 * 1024) {
                head.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                head.extend_from_slice(chunk);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"0\r\n\r\n");
        } else {
            let length = self.declared_length.unwrap_or(self.body.len());
            if length > 0 || !self.body.is_empty() {
                head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&self.body);
        }
        head
    }
}

/// A response read off the socket as bytes, whatever they are (the kit's
/// [`testkit::Reply`] is for responses an HTTP client accepts; these tests
/// also look at the ones it would refuse).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, `Null` if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The messages of an `{"errors":[…]}` body.
    pub fn messages(&self) -> Vec<String> {
        testkit::api::error_messages(&self.json())
    }

    /// Asserts a refusal: `status`, a JSON content type, and the fleet's
    /// error shape. `what` names the request in the failure message.
    #[track_caller]
    pub fn assert_refused(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{what}: unexpected status; body: {}",
            self.text()
        );
        self.assert_clean_4xx(what)
    }

    /// Asserts some 4xx, with a JSON content type and the fleet's error shape.
    #[track_caller]
    pub fn assert_clean_4xx(&self, what: &str) -> &Self {
        assert!(
            (400..500).contains(&self.status),
            "{what}: status {}, not a 4xx; body: {}",
            self.status,
            self.text()
        );
        let content_type = self
            .header_values("content-type")
            .next()
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: content type {content_type:?}; body: {}",
            self.text()
        );
        let body = self.json();
        assert!(
            std::panic::catch_unwind(|| testkit::assert_error_shape(&body)).is_ok(),
            "{what}: not the errors shape: {}",
            self.text()
        );
        self
    }
}

/// Sends `request` to `address` (`host:port`) on a fresh connection and reads
/// the whole response. Writing and reading run at the same time, so a server
/// that answers before it has read the body (a 413) is heard, and a write
/// the server no longer reads is not an error.
pub async fn send(address: &str, request: Request) -> RawReply {
    let stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|err| panic!("hostile: cannot connect to {address}: {err}"));
    let (mut reader, mut writer) = stream.into_split();
    let bytes = request.to_bytes(address);
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        let _ = writer.flush().await;
        // Keep the write half open: closing it would end the request early.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(writer);
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut raw)).await;
    writing.abort();
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(err)) if !raw.is_empty() => {
            eprintln!("hostile: read error after {} bytes: {err}", raw.len())
        }
        Ok(Err(err)) => panic!(
            "hostile: no response ({err}) to {} {}",
            request.method,
            String::from_utf8_lossy(&request.target)
        ),
        Err(_) => panic!(
            "hostile: no response within 30s to {} {}",
            request.method,
            String::from_utf8_lossy(&request.target)
        ),
    }
    parse(&raw).unwrap_or_else(|| {
        panic!(
            "hostile: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Sends `request` through the fleet's ingress.
pub async fn call(request: Request) -> RawReply {
    send(&fleet().address, request).await
}

fn parse(raw: &[u8]) -> Option<RawReply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = headers.iter().find(|(k, _)| k == "content-length") {
        let length: usize = length.1.parse().ok()?;
        rest.get(..length)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
