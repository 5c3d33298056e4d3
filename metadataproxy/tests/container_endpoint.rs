//! The container credentials endpoint in process (`server::handle_at` with
//! `Endpoint::ContainerCredentials`), with fakes behind the Docker, STS and IAM seams: the
//! body SDKs read, the paths served, the authorization token, the `{"code","message"}`
//! errors, and `CONTAINER_IMDS=off` on the metadata service. End to end, with real SDKs and
//! real interception: `tests/tests/container_endpoint.rs`.

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use metadataproxy::identity::{Connection, Container};
use metadataproxy::server::{handle_at, Endpoint, Services};

use metadataproxy::testing::FakeSts;

/// No token, no URI of its own.
const PLAIN: &str = "172.17.0.2";
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/creds?id=7`, `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
const WITH_TOKEN: &str = "172.17.0.3";
/// No `IAM_ROLE`.
const NO_ROLE: &str = "172.17.0.4";
const TOKEN: &str = "Bearer 0123456789abcdef";

fn container(id: char, env: &[&str]) -> Container {
    Container::from_env(
        id.to_string().repeat(32),
        format!("/c{id}"),
        "img:1".into(),
        env.iter().copied(),
    )
}

fn core(flags: &[&str]) -> (Services, Arc<FakeSts>) {
    let token = format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={TOKEN}");
    let containers = [
        (PLAIN, container('a', &["IAM_ROLE=web-role"])),
        (
            WITH_TOKEN,
            container(
                'b',
                &[
                    "IAM_ROLE=db-role",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/creds?id=7",
                    &token,
                ],
            ),
        ),
        (NO_ROLE, container('c', &[])),
    ];
    let mut all = vec!["--default-account-id", "123456789012"];
    all.extend_from_slice(flags);
    common::services_without_socket(&containers, &all)
}

fn from(ip: &str) -> Connection {
    Connection {
        ip: ip.parse::<IpAddr>().unwrap(),
        kernel: None,
        local_port: 80,
    }
}

struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn ask(
    services: &Services,
    endpoint: Endpoint,
    ip: &str,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let host = match endpoint {
        Endpoint::Metadata => "169.254.169.254",
        Endpoint::ContainerCredentials => "169.254.170.2",
    };
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = handle_at(services, endpoint, &from(ip), req).await;
    let header = |name| {
        resp.headers()
            .get(name)
            .map(|v: &http::HeaderValue| v.to_str().unwrap().to_string())
    };
    let content_type = header(http::header::CONTENT_TYPE).unwrap_or_default();
    let allow = header(http::header::ALLOW);
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        allow,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(services: &Services, ip: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    ask(
        services,
        Endpoint::ContainerCredentials,
        ip,
        Method::GET,
        target,
        headers,
    )
    .await
}

/// An error answer: its status and the `{"code","message"}` body, never the reason.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    let v = a.json();
    assert_eq!(v["code"], code, "{}", a.body);
    assert!(v["message"].is_string(), "{}", a.body);
    assert_eq!(v.as_object().unwrap().len(), 2, "{}", a.body);
}

#[tokio::test]
async fn a_container_gets_its_roles_credentials_in_the_container_format() {
    let (services, sts) = core(&[]);
    let a = get(&services, PLAIN, "/v2/credentials/anything-at-all", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    let v = a.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "AccessKeyId",
            "Expiration",
            "RoleArn",
            "SecretAccessKey",
            "Token"
        ]
    );
    assert_eq!(v["RoleArn"], "arn:aws:iam::123456789012:role/web-role");
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
    // The same cache as the metadata service's credential route: one AssumeRole for both.
    let imds = ask(
        &services,
        Endpoint::Metadata,
        PLAIN,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/web-role",
        &[],
    )
    .await;
    assert_eq!(imds.status, 200, "{}", imds.body);
    let imds: serde_json::Value = serde_json::from_str(&imds.body).unwrap();
    assert_eq!(imds["AccessKeyId"], v["AccessKeyId"]);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn only_credentials_paths_and_the_containers_own_uri_are_served() {
    let (services, sts) = core(&[]);
    for target in [
        "/",
        "/v2/credentials/",
        "/v2/credentials//x",
        "/v2/credentials/../x",
        "/v2/credentials/x?y=1",
        "/latest/meta-data/iam/security-credentials/web-role",
        "/creds?id=7",
    ] {
        let a = get(&services, PLAIN, target, &[]).await;
        assert_error(&a, 404, "NotFound");
    }
    // The container that names `/creds?id=7` gets it, exactly (its token sent).
    let auth = [("authorization", TOKEN)];
    let a = get(&services, WITH_TOKEN, "/creds?id=7", &auth).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["RoleArn"],
        "arn:aws:iam::123456789012:role/db-role"
    );
    for target in ["/creds", "/creds?id=8", "/creds?id=7&x", "/Creds?id=7"] {
        let a = get(&services, WITH_TOKEN, target, &auth).await;
        assert_error(&a, 404, "NotFound");
    }
    // Only GET.
    for method in [Method::POST, Method::PUT, Method::HEAD, Method::DELETE] {
        let a = ask(
            &services,
            Endpoint::ContainerCredentials,
            PLAIN,
            method.clone(),
            "/v2/credentials/x",
            &[],
        )
        .await;
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.allow.as_deref(), Some("GET"));
    }
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_containers_token_must_be_sent_exactly() {
    let (services, sts) = core(&[]);
    let target = "/v2/credentials/x";
    assert_error(
        &get(&services, WITH_TOKEN, target, &[]).await,
        401,
        "Unauthorized",
    );
    for wrong in [
        "Bearer 0123456789abcdeF",
        "Bearer 0123456789abcde",
        "0123456789abcdef",
        "",
    ] {
        let a = get(&services, WITH_TOKEN, target, &[("authorization", wrong)]).await;
        assert_error(&a, 401, "Unauthorized");
        assert!(!a.body.contains("0123456789"), "{}", a.body);
    }
    let twice = [("authorization", TOKEN), ("authorization", TOKEN)];
    assert_error(
        &get(&services, WITH_TOKEN, target, &twice).await,
        400,
        "InvalidRequest",
    );
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        0,
        "nothing issued on a refusal"
    );
    let a = get(&services, WITH_TOKEN, target, &[("authorization", TOKEN)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Another container's token does not make a container without one refused.
    let a = get(&services, PLAIN, target, &[("authorization", TOKEN)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn required_authorization_refuses_containers_without_a_token() {
    let (services, _) = core(&["--container-authorization", "required"]);
    let target = "/v2/credentials/x";
    assert_error(
        &get(&services, PLAIN, target, &[]).await,
        403,
        "AccessDenied",
    );
    let a = get(&services, PLAIN, target, &[("authorization", "anything")]).await;
    assert_error(&a, 403, "AccessDenied");
    let a = get(&services, WITH_TOKEN, target, &[("authorization", TOKEN)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn callers_that_are_no_container_or_have_no_role_get_nothing() {
    let (services, sts) = core(&[]);
    let target = "/v2/credentials/x";
    assert_error(
        &get(&services, "172.17.0.99", target, &[]).await,
        404,
        "NotFound",
    );
    assert_error(
        &get(&services, "127.0.0.1", target, &[]).await,
        404,
        "NotFound",
    );
    assert_error(&get(&services, NO_ROLE, target, &[]).await, 404, "NotFound");
    assert_eq!(sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn container_imds_off_refuses_the_metadata_service_not_the_endpoint() {
    let (services, sts) = core(&["--container-imds", "off"]);
    for (method, target) in [
        (Method::GET, "/latest/meta-data/iam/security-credentials/"),
        (
            Method::GET,
            "/latest/meta-data/iam/security-credentials/web-role",
        ),
        (Method::GET, "/latest/meta-data/instance-id"),
        (Method::GET, "/latest/dynamic/instance-identity/document"),
        (Method::GET, "/latest//meta-data/"),
        (Method::PUT, "/latest/api/token"),
    ] {
        for ip in [PLAIN, "172.17.0.99"] {
            let a = ask(
                &services,
                Endpoint::Metadata,
                ip,
                method.clone(),
                target,
                &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
            )
            .await;
            assert_eq!(
                (a.status, a.body.as_str()),
                (403, "403 forbidden\n"),
                "{target}"
            );
        }
    }
    let a = get(&services, PLAIN, "/v2/credentials/x", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}
