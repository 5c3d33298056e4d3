//! The agent over loopback: routes, bodies, headers, passthrough fidelity and the IAM paths
//! that must never reach the upstream. Docker, STS and IAM are fakes here; the end-to-end
//! tests in `tests/` run the same paths against the real engine and moto.

mod common;

use std::sync::atomic::Ordering;

use common::{container, raw_request, Harness};
use metadataproxy::testing::{CREDENTIAL_KEYS, IAM_PATHS, SECRET_MARK};

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

#[tokio::test]
async fn role_listing_is_the_role_name_without_newline() {
    let h = Harness::start(
        &[],
        Some(container(Some("path/my-role@123456789012"), None)),
    )
    .await;
    for path in [CREDS, "/latest/meta-data/iam/security-credentials"] {
        let r = h.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), "my-role");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(r
            .header("x-powered-by")
            .unwrap()
            .starts_with("go-metadataproxy"));
        assert_eq!(r.header("x-request-id").unwrap().len(), 36);
    }
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn credentials_and_info_for_the_containers_own_role() {
    let h = Harness::start(
        &[],
        Some(container(
            Some("arn:aws:iam::123456789012:role/p/my-role"),
            Some("ext-1"),
        )),
    )
    .await;
    let r = h.get(&format!("{CREDS}my-role")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.text();
    assert!(body.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, CREDENTIAL_KEYS);
    assert_eq!(v["Code"], "Success");
    assert_eq!(v["Type"], "AWS-HMAC");
    assert_eq!(v["Expiration"].as_str().unwrap().len(), 20);
    let req = h.sts.requests.lock().unwrap()[0].clone();
    assert_eq!(
        req.role_arn.as_str(),
        "arn:aws:iam::123456789012:role/p/my-role"
    );
    assert_eq!(req.external_id.as_deref(), Some("ext-1"));
    assert_eq!(req.session_name, "go-metadataproxy");

    let r = h.get("/latest/meta-data/iam/info").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["InstanceProfileArn"],
        "arn:aws:sts::123456789012:assumed-role/my-role/go-metadataproxy"
    );
    // Info reuses the cached credentials.
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn another_roles_name_is_404_without_sts() {
    let h = Harness::start(&[], Some(container(Some("my-role@123456789012"), None))).await;
    for role in ["other-role", "My-Role", "my-role-x"] {
        let r = h.get(&format!("{CREDS}{role}")).await;
        assert_eq!(r.status, 404, "{role}");
        assert_eq!(r.text(), "404 page not found\n");
    }
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_role_is_404_unless_a_default_role_is_set() {
    let h = Harness::start(&[], Some(container(None, None))).await;
    assert_eq!(h.get(CREDS).await.status, 404);
    assert_eq!(h.get("/latest/meta-data/iam/info").await.status, 404);

    let h = Harness::start(
        &[
            "--default-role",
            "fallback",
            "--default-account-id",
            "123456789012",
        ],
        Some(container(None, None)),
    )
    .await;
    assert_eq!(h.get(CREDS).await.text(), "fallback");
    assert_eq!(h.get(&format!("{CREDS}fallback")).await.status, 200);
    let arn = h.sts.requests.lock().unwrap()[0].role_arn.clone();
    assert_eq!(arn.as_str(), "arn:aws:iam::123456789012:role/fallback");
    assert_eq!(h.iam.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_caller_is_404_and_passthrough_still_works() {
    let h = Harness::start(&[], None).await;
    assert_eq!(h.get(CREDS).await.status, 404);
    let r = h.get("/latest/meta-data/instance-id").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "i-0123456789abcdef0");
}

#[tokio::test]
async fn bare_role_without_account_is_resolved_by_get_role() {
    let h = Harness::start(&[], Some(container(Some("looked-up"), None))).await;
    assert_eq!(h.get(&format!("{CREDS}looked-up")).await.status, 200);
    assert_eq!(h.get(&format!("{CREDS}looked-up")).await.status, 200);
    assert_eq!(h.iam.0.load(Ordering::SeqCst), 1);
    let arn = h.sts.requests.lock().unwrap()[0].role_arn.clone();
    assert_eq!(
        arn.as_str(),
        "arn:aws:iam::210987654321:role/fake/looked-up"
    );
}

#[tokio::test]
async fn no_iam_path_ever_reaches_the_upstream() {
    let h = Harness::start(&[], Some(container(Some("mine@123456789012"), None))).await;
    for path in IAM_PATHS {
        let r = h.get(path).await;
        assert!(
            [200, 301, 404].contains(&r.status),
            "{path}: unexpected {}",
            r.status
        );
    }
    // Methods other than GET go the same way.
    for method in ["POST", "PUT", "HEAD", "DELETE"] {
        let r = raw_request(
            h.addr,
            &format!("{method} /latest/meta-data/iam/info/x/y HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 404, "{method}");
    }
    let forwarded = h.upstream.recorded();
    assert!(
        forwarded.is_empty(),
        "forwarded upstream: {:?}",
        forwarded
            .iter()
            .map(|r| &r.path_and_query)
            .collect::<Vec<_>>()
    );
    // The test itself would catch a forward: a passthrough path does arrive.
    h.get("/latest/meta-data/ami-id").await;
    let arrived = h.upstream.recorded();
    assert_eq!(
        arrived
            .iter()
            .filter(|r| r.path_and_query == "/latest/meta-data/ami-id")
            .count(),
        1
    );
    // Besides it, only the agent's own token request.
    assert!(arrived
        .iter()
        .all(|r| r.path_and_query == "/latest/meta-data/ami-id"
            || (r.method == "PUT" && r.path_and_query == "/latest/api/token")));
}

#[tokio::test]
async fn non_canonical_paths_redirect_keeping_the_query() {
    let h = Harness::start(&[], None).await;
    let r = h.get("/latest//meta-data/instance-id?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("/latest/meta-data/instance-id?x=1")
    );
    assert!(h.upstream.recorded().is_empty());
}

#[tokio::test]
async fn favicon_is_404() {
    let h = Harness::start(&[], None).await;
    assert_eq!(h.get("/favicon.ico").await.status, 404);
    assert!(h.upstream.recorded().is_empty());
}

#[tokio::test]
async fn passthrough_carries_method_query_body_and_headers_both_ways() {
    let h = Harness::start(&[], None).await;
    // The token PUT is answered by the agent, never forwarded.
    let r = raw_request(
        h.addr,
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    let token = r.text();
    assert!(!token.is_empty());
    assert!(
        h.upstream.recorded().is_empty(),
        "the token PUT stayed local"
    );

    let r = raw_request(
        h.addr,
        &format!(
            "POST /latest/meta-data/instance-id?a=1&b=two HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token: {token}\r\nX-Custom: kept\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    )
    .await;
    // The emulator answers POST with 405: the status comes back as it is.
    assert_eq!(r.status, 405);

    let rec = h.upstream.recorded();
    assert_eq!(rec.len(), 2, "the agent's own token PUT, then the request");
    assert_eq!(rec[0].method, "PUT");
    assert_eq!(rec[0].path_and_query, "/latest/api/token");
    assert_eq!(
        rec[0].headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
    assert_eq!(rec[1].method, "POST");
    assert_eq!(
        rec[1].path_and_query,
        "/latest/meta-data/instance-id?a=1&b=two"
    );
    assert_eq!(rec[1].body.as_ref(), b"hello");
    assert_eq!(rec[1].headers["x-custom"], "kept");
    let upstream_token = &rec[1].headers["x-aws-ec2-metadata-token"];
    assert_ne!(
        upstream_token,
        token.as_str(),
        "the caller's token stays here"
    );
    for r in &rec {
        assert!(!r.headers.contains_key("x-forwarded-for"));
        assert!(!r.headers.contains_key("connection"));
    }

    // With tokens required upstream, passthrough works with or without the caller's token:
    // the agent presents its own.
    h.upstream.require_tokens(true);
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);
    let r = raw_request(
        h.addr,
        &format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: a\r\n\
             X-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    // A token the agent did not mint is refused, as the real service would.
    let r = raw_request(
        h.addr,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: a\r\n\
         X-aws-ec2-metadata-token: forged\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    // The upstream revoking the agent's token (restart) costs one retry, not an error.
    h.upstream.clear_tokens();
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);
}

#[tokio::test]
async fn dead_upstream_is_502() {
    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let url = format!("http://{closed_addr}");
    let h = Harness::start(&["--metadata-url", &url], None).await;
    let r = h.get("/latest/meta-data/instance-id").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "502 bad gateway\n");
}

#[tokio::test(start_paused = false)]
async fn silent_upstream_is_502_after_the_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let url = format!("http://{silent_addr}");
    let h = Harness::start(
        &["--metadata-url", &url, "--metadata-timeout", "300ms"],
        None,
    )
    .await;
    let started = std::time::Instant::now();
    let r = h.get("/latest/meta-data/instance-id").await;
    assert_eq!(r.status, 502);
    // Not a speed assertion: proves the configured timeout, not the client's 20 s, ended it.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn builtin_upstream_serves_the_emulated_tree() {
    let h = Harness::start(&["--metadata-url", "builtin"], None).await;
    let r = h.get("/latest/meta-data/placement/availability-zone").await;
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with('a'));
    assert!(!r.text().contains(SECRET_MARK));
}

async fn put_token(h: &Harness, extra: &str) -> common::RawResponse {
    raw_request(
        h.addr,
        &format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

async fn get_with_token(h: &Harness, path: &str, token: &str) -> common::RawResponse {
    raw_request(
        h.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

#[tokio::test]
async fn token_requests_are_checked_like_the_real_service() {
    let h = Harness::start(&[], None).await;
    for (extra, status) in [
        ("", 400),
        ("X-aws-ec2-metadata-token-ttl-seconds: 0\r\n", 400),
        ("X-aws-ec2-metadata-token-ttl-seconds: 21601\r\n", 400),
        ("X-aws-ec2-metadata-token-ttl-seconds: 1.5\r\n", 400),
        (
            "X-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.1\r\n",
            400,
        ),
        ("X-aws-ec2-metadata-token-ttl-seconds: 1\r\n", 200),
        ("X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n", 200),
    ] {
        assert_eq!(put_token(&h, extra).await.status, status, "{extra:?}");
    }
    let r = h.get("/latest/api/token").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("PUT"));
    assert!(
        h.upstream.recorded().is_empty(),
        "no token request is forwarded"
    );
}

#[tokio::test]
async fn imdsv2_required_refuses_requests_without_a_valid_token() {
    let h = Harness::start(
        &[
            "--imdsv2",
            "required",
            "--default-account-id",
            "123456789012",
        ],
        Some(container(Some("app"), None)),
    )
    .await;
    let creds = "/latest/meta-data/iam/security-credentials/app";
    for path in [
        creds,
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/instance-id",
    ] {
        assert_eq!(h.get(path).await.status, 401, "{path}");
    }
    let token = put_token(&h, "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n")
        .await
        .text();
    let r = get_with_token(&h, creds, &token).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"AccessKeyId\""));
    assert_eq!(
        get_with_token(&h, "/latest/meta-data/instance-id", &token)
            .await
            .status,
        200
    );
    // A token from another agent (another key), a tampered one, garbage: 401.
    let other = Harness::start(&[], None).await;
    let foreign = put_token(&other, "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n")
        .await
        .text();
    let mut tampered = token.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [foreign.as_str(), tampered.as_str(), "x"] {
        assert_eq!(get_with_token(&h, creds, bad).await.status, 401, "{bad}");
    }
    // Tokens never reach the logs or the upstream.
    assert!(h.upstream.recorded().iter().all(|r| r
        .headers
        .get("x-aws-ec2-metadata-token")
        .map(|v| v.as_bytes())
        != Some(token.as_bytes())));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let h = Harness::start(&[], None).await;
    let token = put_token(&h, "X-aws-ec2-metadata-token-ttl-seconds: 1\r\n")
        .await
        .text();
    assert_eq!(
        get_with_token(&h, "/latest/meta-data/instance-id", &token)
            .await
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        get_with_token(&h, "/latest/meta-data/instance-id", &token)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn user_data_is_refused_by_default_in_every_spelling_and_others_still_pass() {
    let h = Harness::start(&[], None).await;
    for path in [
        "/latest/user-data",
        "/latest/user-data/",
        "/latest/User-Data",
        "/latest/user%2Ddata",
        "/2009-04-04/user-data",
    ] {
        let r = h.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), "404 page not found\n");
    }
    assert!(
        h.upstream.recorded().is_empty(),
        "nothing forwarded: {:?}",
        h.upstream.recorded()
    );
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);

    // Opted back in, user-data passes.
    let open = Harness::start(&["--passthrough-deny", ""], None).await;
    open.get("/latest/user-data").await;
    assert!(open
        .upstream
        .recorded()
        .iter()
        .any(|r| r.path_and_query == "/latest/user-data"));
}

#[tokio::test]
async fn an_allow_list_forwards_only_what_it_names() {
    let h = Harness::start(
        &[
            "--passthrough-allow",
            "meta-data/instance-id,meta-data/placement/**",
            "--passthrough-deny",
            "meta-data/placement/region",
        ],
        None,
    )
    .await;
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 200);
    assert_eq!(
        h.get("/latest/meta-data/placement/availability-zone")
            .await
            .status,
        200
    );
    for refused in [
        "/latest/meta-data/placement/region",
        "/latest/meta-data/ami-id",
        "/latest/dynamic/instance-identity/document",
    ] {
        assert_eq!(h.get(refused).await.status, 404, "{refused}");
    }
    let forwarded: Vec<String> = h
        .upstream
        .recorded()
        .into_iter()
        .map(|r| r.path_and_query)
        .filter(|p| p != "/latest/api/token")
        .collect();
    assert_eq!(
        forwarded,
        [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/placement/availability-zone"
        ]
    );
}

#[tokio::test]
async fn a_role_outside_the_policy_is_404_without_an_sts_call() {
    let refused = Harness::start(
        &[
            "--default-account-id",
            "123456789012",
            "--allowed-roles",
            "arn:aws:iam::123456789012:role/apps/*",
        ],
        Some(container(Some("app"), None)),
    )
    .await;
    let r = refused
        .get("/latest/meta-data/iam/security-credentials/app")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(refused.get("/latest/meta-data/iam/info").await.status, 404);
    assert_eq!(refused.sts.calls.load(Ordering::SeqCst), 0);

    let allowed = Harness::start(
        &[
            "--default-account-id",
            "123456789012",
            "--allowed-roles",
            "arn:aws:iam::123456789012:role/apps/*",
        ],
        Some(container(Some("apps/web@123456789012"), None)),
    )
    .await;
    let r = allowed
        .get("/latest/meta-data/iam/security-credentials/web")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
