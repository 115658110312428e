//! ShouldRateLimit over real gRPC (and /json, /healthcheck over real HTTP) on the memory store.

mod support;

use floodgate::pb::rate_limit_response::{Code, rate_limit::Unit};
use floodgate::rls::{InputLimits, ResponseOptions};
use floodgate::server::ServerOptions;
use support::http::http;
use support::{TestServer, request};
use tonic::Code as GrpcCode;

const CONFIG: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: day, requests_per_unit: 3, name: per_ip }
  - key: path
    value: /login
    rate_limit: { unit: day, requests_per_unit: 1 }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 0 }
"#;

#[tokio::test]
async fn admits_up_to_the_limit_then_denies() {
    let server = TestServer::memory(CONFIG, ServerOptions::default()).await;
    let mut client = server.client().await;
    let req = request("edge", &[&[("remote_address", "10.0.0.1")]]);
    for remaining in [2, 1, 0] {
        let response = client
            .should_rate_limit(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.overall_code(), Code::Ok);
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, remaining);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit(), limit.name.as_str()),
            (3, Unit::Day, "per_ip")
        );
        let reset = status.duration_until_reset.as_ref().unwrap();
        assert!(reset.seconds <= 86_400 && (reset.seconds > 0 || reset.nanos > 0));
    }
    let response = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(response.overall_code(), Code::OverLimit);
    assert_eq!(response.statuses[0].code(), Code::OverLimit);
    // another address has its own counter
    let other = request("edge", &[&[("remote_address", "10.0.0.2")]]);
    assert_eq!(
        client
            .should_rate_limit(other)
            .await
            .unwrap()
            .into_inner()
            .overall_code(),
        Code::Ok
    );
    server.stop().await;
}

#[tokio::test]
async fn statuses_follow_request_order_and_shadow_never_denies() {
    let server = TestServer::memory(CONFIG, ServerOptions::default()).await;
    let mut client = server.client().await;
    let req = request(
        "edge",
        &[
            &[("shadow", "x")],
            &[("unknown", "y")],
            &[("path", "/login")],
        ],
    );
    let response = client
        .should_rate_limit(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code(), Code::Ok);
    let codes: Vec<Code> = response.statuses.iter().map(|s| s.code()).collect();
    assert_eq!(codes, vec![Code::Ok, Code::Ok, Code::Ok]);
    assert!(response.statuses[1].current_limit.is_none());
    assert_eq!(
        response.statuses[2].current_limit.as_ref().unwrap().unit(),
        Unit::Day
    );
    let response = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(response.overall_code(), Code::OverLimit);
    let codes: Vec<Code> = response.statuses.iter().map(|s| s.code()).collect();
    assert_eq!(codes, vec![Code::Ok, Code::Ok, Code::OverLimit]);
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_cap() {
    let options = ServerOptions {
        input_limits: InputLimits {
            max_descriptors: 2,
            max_entries: 2,
            max_value_len: 16,
        },
        ..ServerOptions::default()
    };
    let server = TestServer::memory(CONFIG, options).await;
    let mut client = server.client().await;
    let long = "x".repeat(17);
    let cases = [
        (request("", &[&[("a", "b")]]), "domain must not be empty"),
        (request("edge", &[]), "descriptors must not be empty"),
        (
            request("edge", &[&[("a", "b")], &[("a", "b")], &[("a", "b")]]),
            "too many descriptors: 3 (at most 2)",
        ),
        (
            request("edge", &[&[("a", "b"), ("c", "d"), ("e", "f")]]),
            "descriptors[0]: too many entries: 3 (at most 2)",
        ),
        (
            request("edge", &[&[("a", &long)]]),
            "descriptors[0].entries[0].value: too long: 17 bytes (at most 16)",
        ),
        (
            request("edge", &[&[]]),
            "descriptors[0]: entries must not be empty",
        ),
    ];
    for (req, message) in cases {
        let status = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(status.code(), GrpcCode::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
    }
    // the server is still serving
    let ok = client
        .should_rate_limit(request("edge", &[&[("a", "b")]]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().overall_code(), Code::Ok);
}

#[tokio::test]
async fn limit_headers_come_from_the_most_constrained_descriptor() {
    let options = ServerOptions {
        response_options: ResponseOptions {
            limit_headers: true,
            ..ResponseOptions::default()
        },
        ..ServerOptions::default()
    };
    let server = TestServer::memory(CONFIG, options).await;
    let mut client = server.client().await;
    let req = request(
        "edge",
        &[&[("remote_address", "10.1.1.1")], &[("path", "/login")]],
    );
    let response = client.should_rate_limit(req).await.unwrap().into_inner();
    let headers: Vec<(&str, &str)> = response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers[0], ("RateLimit-Limit", "1"));
    assert_eq!(headers[1], ("RateLimit-Remaining", "0"));
    assert_eq!(headers[2].0, "RateLimit-Reset");
    let reset: u64 = headers[2].1.parse().unwrap();
    assert!((1..=86_400).contains(&reset));
}

#[tokio::test]
async fn limit_header_names_can_be_chosen() {
    let options = ServerOptions {
        response_options: ResponseOptions {
            limit_headers: true,
            header_names: floodgate::rls::response::LimitHeaderNames {
                limit: "X-Limit".into(),
                remaining: "X-Left".into(),
                reset: "X-Reset".into(),
            },
            ..ResponseOptions::default()
        },
        ..ServerOptions::default()
    };
    let server = TestServer::memory(CONFIG, options).await;
    let mut client = server.client().await;
    let req = request("edge", &[&[("path", "/login")]]);
    let response = client.should_rate_limit(req).await.unwrap().into_inner();
    let names: Vec<&str> = response
        .response_headers_to_add
        .iter()
        .map(|h| h.key.as_str())
        .collect();
    assert_eq!(names, ["X-Limit", "X-Left", "X-Reset"]);
}

#[tokio::test]
async fn json_endpoint_and_healthcheck() {
    let server = TestServer::memory(CONFIG, ServerOptions::default()).await;
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"path","value":"/login"}]}]}"#;
    let (status, text) = http(server.http_addr, "POST", "/json", body).await;
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["overallCode"], "OK");
    assert_eq!(json["statuses"][0]["currentLimit"]["unit"], "DAY");
    let (status, text) = http(server.http_addr, "POST", "/json", body).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["overallCode"],
        "OVER_LIMIT"
    );
    let (status, text) = http(server.http_addr, "POST", "/json", "{not json").await;
    assert_eq!(status, 400);
    assert!(text.contains("invalid JSON request"), "{text}");
    let (status, text) = http(server.http_addr, "POST", "/json", r#"{"domain":"edge"}"#).await;
    assert_eq!(
        (status, text.contains("descriptors must not be empty")),
        (400, true),
        "{text}"
    );
    let (status, text) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!((status, text.as_str()), (200, "OK\n"));
}
