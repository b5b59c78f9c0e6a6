//! The routing table in `infra/routes.json` routes like the Kubernetes ingress.

use devstack::routes::{self, service_for};

#[test]
fn each_api_prefix_goes_to_its_service() {
    assert_eq!(service_for("/api/users"), "auth");
    assert_eq!(service_for("/api/users/"), "auth");
    assert_eq!(service_for("/api/users/signin"), "auth");
    assert_eq!(service_for("/api/users/currentuser"), "auth");
    assert_eq!(service_for("/api/tickets"), "tickets");
    assert_eq!(
        service_for("/api/tickets/5f1a2b3c4d5e6f7a8b9c0d1e"),
        "tickets"
    );
    assert_eq!(service_for("/api/orders"), "orders");
    assert_eq!(service_for("/api/orders/abc"), "orders");
    assert_eq!(service_for("/api/payments"), "payments");
    assert_eq!(service_for("/api/payments/"), "payments");
}

#[test]
fn a_prefix_matches_the_start_of_the_path_like_an_nginx_regex_location() {
    // ingress-nginx runs `/api/users/?(.*)` as `~* "^/api/users/?(.*)"`: a
    // case-insensitive prefix match, not a segment match.
    assert_eq!(service_for("/api/usersX"), "auth");
    assert_eq!(service_for("/api/users-admin/x"), "auth");
    assert_eq!(service_for("/api/ticketsfoo"), "tickets");
    assert_eq!(service_for("/API/Users/signin"), "auth");
    assert_eq!(service_for("/Api/Orders"), "orders");
    assert_eq!(service_for("/api"), "client");
    assert_eq!(service_for("/api/"), "client");
    assert_eq!(service_for("/ap"), "client");
}

#[test]
fn everything_else_goes_to_the_client() {
    assert_eq!(service_for("/"), "client");
    assert_eq!(service_for(""), "client");
    assert_eq!(service_for("/tickets/new"), "client");
    assert_eq!(service_for("/orders/123"), "client");
    assert_eq!(service_for("/_next/static/chunk.js"), "client");
}

#[test]
fn query_strings_are_ignored_for_matching() {
    assert_eq!(service_for("/api/tickets?limit=5"), "tickets");
    assert_eq!(service_for("/api/users?next=/api/orders"), "auth");
    assert_eq!(service_for("/api/userx?x=/api/users/"), "client");
    assert_eq!(service_for("/?page=/api/orders"), "client");
}

#[test]
fn the_table_declares_host_ports_and_a_catch_all_last() {
    let table = routes::table();
    assert_eq!(table.host, "ticketing.dev");
    for service in [
        "auth",
        "tickets",
        "orders",
        "expiration",
        "payments",
        "client",
    ] {
        assert_eq!(table.services[service].container_port, 3000, "{service}");
    }
    let last = table.routes.last().unwrap();
    assert_eq!(
        (last.prefix.as_str(), last.service.as_str()),
        ("/", "client")
    );
    let routed: Vec<&str> = table.routed_services().collect();
    assert_eq!(routed, ["auth", "tickets", "orders", "payments", "client"]);
}

#[test]
fn ingress_paths_are_the_prefix_regexes_nginx_matches_the_same_way() {
    for route in &routes::table().routes {
        if route.prefix == "/" {
            assert_eq!(route.ingress_path, "/?(.*)");
        } else {
            assert_eq!(route.ingress_path, format!("{}/?(.*)", route.prefix));
        }
    }
}
