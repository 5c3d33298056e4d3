//! What the agent forwards, over loopback with a recording upstream: only canonical paths
//! (no spelling of a credential, token or user-data path ever arrives), only plain header
//! names, one value for each header that decides something, and answers for bodies over the
//! limit and for requests without a token under `IMDSV2=required`.

mod common;

use std::time::Duration;

use common::{container, raw_request, Harness};

/// Ways to disguise one segment `name`, as an upstream might still read it as `name`.
fn decorations(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let suffixes = [
        ".",
        "..",
        "...",
        "~",
        "~1",
        "%2e",
        "%2E",
        "%20",
        "%09",
        "%0a",
        "%00",
        ";",
        ";x",
        "%3b",
        "%3f",
        "%23",
        "%c0%ae",
        "%e0%80%ae",
        "%u002e",
        "%uff0e",
        "%ef%bc%8e",
        "%e3%80%82",
        "%c0%af",
        "%2f",
        "%2F",
        "%252e",
        "%252f",
        "%25",
        "%5c",
        "%5C",
        "\\",
        "x",
        "_",
        "-",
        "+",
        "%2b",
        "=",
        ",",
        "@",
        ":",
        "%e2%80%8b",
        "%c2%a0",
        "%ff",
        "%c0%80",
        "/.",
        "/x/..",
        "/%2e%2e",
        "%2f..",
        "/.%2e",
        "/..;",
        "%7e",
    ];
    for s in suffixes {
        out.push(format!("{name}{s}"));
    }
    for p in [
        ".",
        "~",
        "%20",
        "%2e",
        "_",
        "-",
        "x",
        "%09",
        "+",
        "%ef%bb%bf",
        "./",
    ] {
        out.push(format!("{p}{name}"));
    }
    out.push(name.to_uppercase());
    let mut title = name.to_string();
    title[..1].make_ascii_uppercase();
    out.push(title);
    // Each character: double-encoded, overlong, full-width.
    for (i, c) in name.char_indices() {
        let (before, after) = (&name[..i], &name[i + c.len_utf8()..]);
        let b = c as u32;
        out.push(format!("{before}%25{b:02x}{after}"));
        out.push(format!("{before}%c0%{:02x}{after}", 0x80 | (b & 0x3f)));
        if c.is_ascii_alphanumeric() {
            let wide = char::from_u32(0xff00 + b - 0x20).expect("full-width form");
            let mut enc = String::new();
            for byte in wide.to_string().bytes() {
                enc.push_str(&format!("%{byte:02x}"));
            }
            out.push(format!("{before}{enc}{after}"));
        }
    }
    // The hyphen, spelled otherwise.
    if name.contains('-') {
        for h in [
            "_",
            "",
            ".",
            "%2d%2d",
            "%e2%80%90",
            "%e2%88%92",
            "%c2%ad",
            "+",
        ] {
            out.push(name.replace('-', h));
        }
    }
    out
}

/// Requests (method, target) that decorate one segment of a path that reaches the host's
/// credentials, a token, or user data.
fn disguised_requests() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let templates: &[(&str, &[&str])] = &[
        (
            "meta-data",
            &[
                "/latest/{}/iam/security-credentials/my-role",
                "/latest/{}/identity-credentials/ec2/security-credentials/ec2-instance",
            ],
        ),
        (
            "iam",
            &[
                "/latest/meta-data/{}/security-credentials/my-role",
                "/latest/meta-data/{}/info",
                "/latest/meta-data/x/{}/security-credentials/my-role",
            ],
        ),
        (
            "identity-credentials",
            &["/latest/meta-data/{}/ec2/security-credentials/ec2-instance"],
        ),
        ("api", &["/latest/{}/token"]),
        ("token", &["/latest/api/{}"]),
        ("user-data", &["/latest/{}", "/latest/meta-data/{}"]),
    ];
    for (name, paths) in templates {
        for deco in decorations(name) {
            for template in *paths {
                let target = template.replace("{}", &deco);
                let method = if matches!(*name, "api" | "token") {
                    "PUT"
                } else {
                    "GET"
                };
                out.push((method, target));
            }
        }
    }
    out
}

#[tokio::test]
async fn no_decorated_spelling_reaches_the_upstream() {
    let h = Harness::start(
        &["--request-rate-limit", "0"],
        Some(container(Some("my-role@123456789012"), None)),
    )
    .await;
    let requests = disguised_requests();
    assert!(requests.len() >= 500, "{} requests", requests.len());
    let mut statuses = std::collections::BTreeMap::new();
    for (method, target) in &requests {
        let r = raw_request(
            h.addr,
            &format!(
                "{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                 X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let arrived: Vec<String> = h
        .upstream
        .recorded()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert!(
        arrived.is_empty(),
        "{} of {} disguised requests reached the upstream: {arrived:?}",
        arrived.len(),
        requests.len()
    );
    // Every one got an answer, none of them a forward's.
    assert!(
        statuses
            .keys()
            .all(|s| [200, 301, 400, 404, 405].contains(s)),
        "{statuses:?}"
    );

    // The recorder sees what is forwarded: the canonical form, byte for byte.
    let r = h
        .get("/latest/meta-data/network/interfaces/macs/02%3A29:96:8f:6a:2d/mac?x=1")
        .await;
    assert_eq!(r.status, 404, "the emulator has no such MAC");
    let arrived: Vec<String> = h
        .upstream
        .recorded()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        arrived,
        ["/latest/meta-data/network/interfaces/macs/02:29:96:8f:6a:2d/mac?x=1"]
    );
}

#[tokio::test]
async fn non_canonical_paths_are_404_and_logged_as_such() {
    let h = Harness::start(&[], None).await;
    for path in [
        "/latest/meta-data/x/%c0%ae%c0%ae/iam/security-credentials/role",
        "/latest/meta-data./iam/info",
        "/latest/api/tokenx",
        "/latest/meta-data/instance-id?%00",
    ] {
        let r = h.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), "404 page not found\n");
        assert!(r.header("x-request-id").is_some());
    }
    // A redirect only into the form.
    let r = h.get("/latest//meta-data/instance-id").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/latest/meta-data/instance-id"));
    assert_eq!(h.get("/latest//meta-data/a%00").await.status, 404);
    assert!(h.upstream.recorded().is_empty());
}

fn with_headers(target: &str, method: &str, headers: &[(&str, &str)]) -> String {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
    raw
}

#[tokio::test]
async fn headers_that_decide_something_may_appear_once() {
    let h = Harness::start(&["--check-host-header", "true"], None).await;
    let token = raw_request(
        h.addr,
        &with_headers(
            "/latest/api/token",
            "PUT",
            &[
                ("Host", "169.254.169.254"),
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ],
        ),
    )
    .await;
    assert_eq!(token.status, 200);
    let token = token.text();
    let host = ("Host", "169.254.169.254");
    let valid = ("X-aws-ec2-metadata-token", token.as_str());
    let bogus = ("X-aws-ec2-metadata-token", "bogus");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/latest/meta-data/ami-id",
            vec![host, ("Host", "evil.example")],
        ),
        (
            "GET",
            "/latest/meta-data/ami-id",
            vec![("Host", "evil.example"), host],
        ),
        ("GET", "/latest/meta-data/ami-id", vec![host, valid, bogus]),
        ("GET", "/latest/meta-data/ami-id", vec![host, bogus, valid]),
        (
            "PUT",
            "/latest/api/token",
            vec![
                host,
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                ("X-aws-ec2-metadata-token-ttl-seconds", "99999"),
            ],
        ),
    ];
    for (method, target, headers) in &cases {
        let r = raw_request(h.addr, &with_headers(target, method, headers)).await;
        assert_eq!(r.status, 400, "{method} {target} {headers:?}");
        assert!(r.header("x-request-id").is_some());
    }
    // One of each is fine.
    let r = raw_request(
        h.addr,
        &with_headers("/latest/meta-data/ami-id", "GET", &[host, valid]),
    )
    .await;
    assert_eq!(r.status, 200);
    // The absolute form's authority is the host that counts (RFC 9112 3.2.2).
    for (authority, status) in [("169.254.169.254", 200), ("evil.example", 400)] {
        let r = raw_request(
            h.addr,
            &with_headers(
                &format!("http://{authority}/latest/meta-data/ami-id"),
                "GET",
                &[host],
            ),
        )
        .await;
        assert_eq!(r.status, status, "{authority}");
    }
}

#[tokio::test]
async fn odd_header_names_are_not_forwarded_and_token_puts_refuse_proxy_headers() {
    let h = Harness::start(&[], None).await;
    let r = raw_request(
        h.addr,
        &with_headers(
            "/latest/meta-data/ami-id",
            "GET",
            &[
                ("Host", "169.254.169.254"),
                ("X_aws_ec2_metadata_token", "smuggled"),
                ("X_Forwarded_For", "10.9.9.9"),
                ("X-Plain", "kept"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = h.upstream.recorded();
    let got = rec
        .iter()
        .find(|r| r.path_and_query == "/latest/meta-data/ami-id")
        .expect("forwarded");
    assert_eq!(got.headers.get("x-plain").unwrap(), "kept");
    assert!(
        got.headers.keys().all(|k| !k.as_str().contains('_')),
        "{:?}",
        got.headers
    );

    for header in [
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Real-IP",
        "Forwarded",
        "Via",
        "X-Forwarded-Host",
    ] {
        let r = raw_request(
            h.addr,
            &with_headers(
                "/latest/api/token",
                "PUT",
                &[
                    ("Host", "169.254.169.254"),
                    ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                    (header, "10.0.0.1"),
                ],
            ),
        )
        .await;
        assert_eq!(r.status, 400, "{header}");
    }
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_at_once() {
    let h = Harness::start(&["--body-read-timeout", "30s"], None).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Declares 1 MiB and sends none of it: the answer must not wait for the body timeout.
    s.write_all(
        b"PUT /latest/meta-data/x HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("answered before the 30 s body timeout")
        .unwrap();
    let r = common::parse_response(&buf[..n]);
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "413 content too large\n");
    assert!(h.upstream.recorded().is_empty());
}

#[tokio::test]
async fn with_tokens_required_every_answer_but_the_token_route_needs_one() {
    let h = Harness::start(&["--imdsv2", "required"], None).await;
    for path in [
        "/latest//meta-data/ami-id",
        "/favicon.ico",
        "/latest/meta-data./iam/info",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/ami-id",
    ] {
        let r = h.get(path).await;
        assert_eq!(r.status, 401, "{path}");
    }
    // The token route answers without one: 405 for a GET, a token for a PUT.
    assert_eq!(h.get("/latest/api/token").await.status, 405);
    let r = raw_request(
        h.addr,
        &with_headers(
            "/latest/api/token",
            "PUT",
            &[
                ("Host", "169.254.169.254"),
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let token = r.text();
    let r = raw_request(
        h.addr,
        &with_headers(
            "/latest//meta-data/ami-id",
            "GET",
            &[
                ("Host", "169.254.169.254"),
                ("X-aws-ec2-metadata-token", &token),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 301);
    assert!(h.upstream.recorded().is_empty());
}

#[tokio::test]
async fn stalled_bodies_cannot_hold_more_than_the_body_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(&["--body-read-timeout", "60s"], None).await;
    let chunk = vec![b'a'; 60_000];
    let per_body = chunk.len();
    let fit = metadataproxy::limits::BODY_BUDGET / per_body;
    let mut stalled = Vec::new();
    for _ in 0..fit + 8 {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        s.write_all(
            b"PUT /latest/meta-data/x HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: 65000\r\n\r\n",
        )
        .await
        .unwrap();
        s.write_all(&chunk).await.unwrap();
        stalled.push(s);
    }
    // Those past the budget are answered 503 as soon as their bytes arrive; the others wait
    // for the rest of their body (up to the 60 s timeout), holding their share.
    let answers = futures_util::future::join_all(stalled.iter_mut().map(|s| async move {
        let mut buf = vec![0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Some(common::parse_response(&buf[..n]).status),
            _ => None,
        }
    }))
    .await;
    let refused = answers.iter().filter(|a| a.is_some()).count();
    assert!(answers.iter().flatten().all(|s| *s == 503), "{answers:?}");
    assert!(refused >= 8, "{refused} of {} refused", stalled.len());
    assert!(h.upstream.recorded().is_empty());
    // Closing the stalled connections gives the budget back.
    drop(stalled);
    let mut served = false;
    for _ in 0..50 {
        let r = raw_request(
            h.addr,
            "PUT /latest/meta-data/x HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        if r.status != 503 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the budget came back");
}
