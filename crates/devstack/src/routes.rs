//! The fleet's routing table, from `infra/routes.json` (compiled in).
//!
//! `infra/routes.json` is the single source of truth for which service serves
//! which path: the local ingress ([`crate::ingress`]) routes by it, and the
//! Kubernetes ingress is checked against it.
//!
//! Matching, identical to the ingress-nginx regex paths recorded next to each
//! route (`/api/users/?(.*)`, which ingress-nginx turns into the
//! case-insensitive regex location `~* "^/api/users/?(.*)"`):
//! - a route's prefix matches the start of the path, ASCII case-insensitively
//!   (`/api/users`, `/api/users/signin`, `/API/Users` and `/api/usersX` all go
//!   to auth, exactly as they do behind nginx);
//! - the query string is ignored;
//! - routes are tried in order, the first match wins, and the catch-all `/`
//!   (the web client) is last. No route may be shadowed by an earlier one, so
//!   the order nginx tries them in (longest path first) gives the same answer.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// The table's JSON, embedded at compile time.
pub const ROUTES_JSON: &str = include_str!("../../../infra/routes.json");

/// The parsed routing table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    /// The public host name (`ticketing.dev`).
    pub host: String,
    /// Every service of the fleet, routed or not, and its container port.
    pub services: BTreeMap<String, ServiceEntry>,
    /// Routes in match order; the last is the catch-all `/`.
    pub routes: Vec<Route>,
}

/// One service of the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// The port the service listens on inside its container.
    pub container_port: u16,
}

/// One route: a path prefix and the service behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `/api/users`, or `/` for the catch-all.
    pub prefix: String,
    /// The service name (a key of [`RouteTable::services`]).
    pub service: String,
    /// The equivalent ingress-nginx regex path.
    pub ingress_path: String,
}

impl Route {
    /// Whether this route matches `path` (a path without query string).
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        path.get(..self.prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(&self.prefix))
    }
}

impl RouteTable {
    /// Parses and validates a table: at least one route, prefixes start with
    /// `/` and don't end with one, every service is declared, no route is
    /// shadowed by an earlier one, and the last route is the catch-all `/`.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let table: Self = serde_json::from_str(json).context("invalid routing table JSON")?;
        let Some(last) = table.routes.last() else {
            bail!("the routing table has no routes");
        };
        ensure!(
            last.prefix == "/",
            "the last route must be the catch-all `/`"
        );
        for (index, route) in table.routes.iter().enumerate() {
            ensure!(
                route.prefix.starts_with('/'),
                "route prefix {:?} must start with `/`",
                route.prefix
            );
            ensure!(
                route.prefix == "/" || !route.prefix.ends_with('/'),
                "route prefix {:?} must not end with `/`",
                route.prefix
            );
            ensure!(
                route.prefix != "/" || index == table.routes.len() - 1,
                "the catch-all `/` must be the last route"
            );
            if let Some(earlier) = table.routes[..index]
                .iter()
                .find(|earlier| route.prefix != "/" && earlier.matches(&route.prefix))
            {
                bail!(
                    "route {:?} is shadowed by the earlier route {:?}",
                    route.prefix,
                    earlier.prefix
                );
            }
            ensure!(
                table.services.contains_key(&route.service),
                "route {:?} names unknown service {:?}",
                route.prefix,
                route.service
            );
        }
        Ok(table)
    }

    /// The service that serves `path` (query string, if any, is ignored).
    pub fn service_for(&self, path: &str) -> &str {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.routes
            .iter()
            .find(|route| route.matches(path))
            .or(self.routes.last())
            .map_or("", |route| route.service.as_str())
    }

    /// The services that have a route, in route order.
    pub fn routed_services(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.service.as_str())
    }
}

static TABLE: LazyLock<RouteTable> = LazyLock::new(|| {
    // The JSON is compiled in and validated by this crate's tests, so a failure
    // here is a build of an invalid `infra/routes.json`, not a runtime condition.
    RouteTable::parse(ROUTES_JSON).unwrap_or_else(|error| panic!("infra/routes.json: {error:#}"))
});

/// The fleet's routing table (`infra/routes.json`).
pub fn table() -> &'static RouteTable {
    &TABLE
}

/// The service that serves `path`, by the fleet's table.
pub fn service_for(path: &str) -> &'static str {
    table().service_for(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_table_without_catch_all_last() {
        let json = r#"{"host":"h","services":{"a":{"containerPort":1}},
            "routes":[{"prefix":"/","service":"a","ingressPath":"/"},
                      {"prefix":"/x","service":"a","ingressPath":"/x"}]}"#;
        assert!(RouteTable::parse(json).is_err());
    }

    #[test]
    fn rejects_a_route_shadowed_by_an_earlier_one() {
        let json = r#"{"host":"h","services":{"a":{"containerPort":1}},
            "routes":[{"prefix":"/api/users","service":"a","ingressPath":"/api/users/?(.*)"},
                      {"prefix":"/api/users-admin","service":"a","ingressPath":"/api/users-admin/?(.*)"},
                      {"prefix":"/","service":"a","ingressPath":"/?(.*)"}]}"#;
        assert!(RouteTable::parse(json).is_err());
    }

    #[test]
    fn rejects_unknown_services() {
        let json = r#"{"host":"h","services":{},
            "routes":[{"prefix":"/","service":"a","ingressPath":"/"}]}"#;
        assert!(RouteTable::parse(json).is_err());
    }
}
