//! A small HTTP client for the scenarios (signing up, listing, ordering…),
//! where correctness matters more than the client's own overhead.

use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    /// The `Cookie` header value (`session=…`).
    pub cookie: String,
}

/// A response: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub cookie: Option<String>,
    /// The `Link` header (the listing's next page).
    pub link: Option<String>,
}

impl Reply {
    pub fn id(&self) -> anyhow::Result<String> {
        self.body["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no id in {}", self.body))
    }

    pub fn expect(self, status: u16, what: &str) -> anyhow::Result<Self> {
        if self.status != status {
            bail!(
                "{what}: expected {status}, got {} {}",
                self.status,
                self.body
            );
        }
        Ok(self)
    }
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        user: Option<&User>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(user) = user {
            request = request.header(reqwest::header::COOKIE, &user.cookie);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status().as_u16();
        let cookie = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|pair| pair.starts_with("session="))
            .map(str::to_owned);
        let link = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        Ok(Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            cookie,
            link,
        })
    }

    pub async fn get(&self, path: &str, user: Option<&User>) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, user, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        user: Option<&User>,
        body: Value,
    ) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, user, Some(&body)).await
    }

    pub async fn put(&self, path: &str, user: Option<&User>, body: Value) -> anyhow::Result<Reply> {
        self.send(Method::PUT, path, user, Some(&body)).await
    }

    /// Signs up `email` (a fresh address each time).
    pub async fn signup(&self, email: &str) -> anyhow::Result<User> {
        let reply = self
            .post(
                "/api/users/signup",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await?
            .expect(201, "signup")?;
        Ok(User {
            email: email.to_owned(),
            cookie: reply.cookie.context("signup set no session cookie")?,
        })
    }

    /// Lists a ticket; returns its id.
    pub async fn sell(&self, seller: &User, title: &str, price: f64) -> anyhow::Result<String> {
        self.post(
            "/api/tickets",
            Some(seller),
            json!({"title": title, "price": price}),
        )
        .await?
        .expect(201, "create ticket")?
        .id()
    }
}

/// Every bench user's password.
pub const PASSWORD: &str = "bench-password-1";

/// `n` users signed up at once, `bench-<tag>-<i>-<run>@bench.test`.
pub async fn signup_many(api: &Api, tag: &str, n: usize) -> anyhow::Result<Vec<User>> {
    let run = std::process::id();
    let signups = (0..n).map(|i| {
        let api = api.clone();
        let email = format!("bench-{tag}-{i}-{run}@bench.test");
        async move { api.signup(&email).await }
    });
    futures::future::try_join_all(signups).await
}
