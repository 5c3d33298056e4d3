//! The request core without a socket: `server::handle` takes a request with its body in
//! memory and a connection description, and returns the response. The fakes sit behind the
//! Docker, STS and IAM seams and the built-in emulator is the upstream, so nothing here
//! listens or connects.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use metadataproxy::identity::Connection;
use metadataproxy::server::{handle, Services};

use common::container;
use metadataproxy::testing::FakeSts;

const CONTAINER_IP: &str = "172.17.0.2";

fn core(flags: &[&str]) -> (Services, Arc<FakeSts>) {
    common::services_without_socket(&[(CONTAINER_IP, container(Some("web-role"), None))], flags)
}

fn from(ip: &str) -> Connection {
    Connection {
        ip: ip.parse::<IpAddr>().unwrap(),
        kernel: None,
        local_port: 80,
    }
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "169.254.169.254");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

async fn answer(
    services: &Services,
    conn: &Connection,
    req: Request<Full<Bytes>>,
) -> (u16, String) {
    let resp = handle(services, conn, req).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_container_gets_its_own_roles_credentials_without_a_socket() {
    let (services, sts) = core(&["--default-account-id", "123456789012"]);
    let base = "/latest/meta-data/iam/security-credentials/";
    let conn = from(CONTAINER_IP);
    let (status, body) = answer(&services, &conn, request(Method::GET, base, &[])).await;
    assert_eq!((status, body.as_str()), (200, "web-role"));
    let (status, body) = answer(
        &services,
        &conn,
        request(Method::GET, &format!("{base}web-role"), &[]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"Code\": \"Success\""), "{body}");
    assert_eq!(sts.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Another role's name, and an address no container owns: the same 404, no STS call.
    let (status, _) = answer(
        &services,
        &conn,
        request(Method::GET, &format!("{base}other-role"), &[]),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = answer(
        &services,
        &from("172.17.0.99"),
        request(Method::GET, base, &[]),
    )
    .await;
    assert_eq!((status, body.as_str()), (404, "404 page not found\n"));
    assert_eq!(sts.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refusals_get_their_documented_statuses_without_a_socket() {
    let (services, _) = core(&["--imdsv2", "required"]);
    let conn = from(CONTAINER_IP);
    // No token with IMDSV2=required.
    let (status, _) = answer(
        &services,
        &conn,
        request(Method::GET, "/latest/meta-data/instance-id", &[]),
    )
    .await;
    assert_eq!(status, 401);
    // A token PUT that went through a proxy.
    let (status, _) = answer(
        &services,
        &conn,
        request(
            Method::PUT,
            "/latest/api/token",
            &[
                ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
                ("x-forwarded-for", "10.0.0.1"),
            ],
        ),
    )
    .await;
    assert_eq!(status, 400);
    // A token, then a passthrough request with it.
    let (status, token) = answer(
        &services,
        &conn,
        request(
            Method::PUT,
            "/latest/api/token",
            &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
        ),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = answer(
        &services,
        &conn,
        request(
            Method::GET,
            "/latest/meta-data/instance-id",
            &[("x-aws-ec2-metadata-token", &token)],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("i-"), "{body}");
    // The token is bound to its caller.
    let (status, _) = answer(
        &services,
        &from("172.17.0.99"),
        request(
            Method::GET,
            "/latest/meta-data/instance-id",
            &[("x-aws-ec2-metadata-token", &token)],
        ),
    )
    .await;
    assert_eq!(status, 401);
    // A method other than PUT on the token path.
    let (status, _) = answer(
        &services,
        &conn,
        request(Method::GET, "/latest/api/token", &[]),
    )
    .await;
    assert_eq!(status, 405);
}
