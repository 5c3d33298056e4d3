//! IMDSv2 end to end (classic mode): the AWS SDK's own IMDS credentials provider, run in a
//! container's network namespace and cgroup, against the agent with `IMDSV2=required`; tokens
//! bound to their container; passthrough to an upstream that requires tokens.

use metadataproxy_tests::{caller_identity, Classic, Container};

const MD: &str = "http://169.254.169.254/latest/meta-data";
const TOKEN_URL: &str = "http://169.254.169.254/latest/api/token";

fn put_token(
    c: &Container,
    extra: &[&str],
) -> (u16, std::collections::HashMap<String, String>, String) {
    let mut args = vec![
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 300",
    ];
    for h in extra {
        args.push("-H");
        args.push(h);
    }
    args.push(TOKEN_URL);
    c.curl(&args)
}

fn get(c: &Container, url: &str, token: Option<&str>) -> (u16, String) {
    let header = token.map(|t| format!("X-aws-ec2-metadata-token: {t}"));
    let mut args: Vec<&str> = Vec::new();
    if let Some(h) = &header {
        args.push("-H");
        args.push(h);
    }
    args.push(url);
    let (status, _, body) = c.curl(&args);
    (status, body)
}

#[test]
fn the_sdk_gets_its_containers_credentials_with_tokens_required() {
    let s = Classic::start(
        "imdsv2",
        71,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("IMDSV2", "required"),
        ],
    );
    let a = s.container("imdsv2-a", &[("IAM_ROLE", "role-a")]);
    let b = s.container("imdsv2-b", &[("IAM_ROLE", "role-b")]);

    // The SDK's provider: token PUT, role listing and credentials with the token.
    let out = a.run_inside(env!("CARGO_BIN_EXE_imds-client"), &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.agent.raw_logs()
    );
    let creds: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("credentials JSON from the SDK");
    assert!(caller_identity(&s.env.moto_url, &creds).contains(":assumed-role/role-a/"));

    // Without a token: 401, on credential, info and passthrough routes alike.
    for path in [
        "/iam/security-credentials/role-a",
        "/iam/security-credentials/",
        "/iam/info",
        "/instance-id",
    ] {
        assert_eq!(get(&a, &format!("{MD}{path}"), None).0, 401, "{path}");
    }
    // A token request that went through a proxy: 400; a bad TTL: 400.
    assert_eq!(put_token(&a, &["X-Forwarded-For: 10.1.2.3"]).0, 400);
    let (status, _, _) = a.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 21601",
        TOKEN_URL,
    ]);
    assert_eq!(status, 400);

    // A's token works for A, and is refused from B.
    let (status, headers, token_a) = put_token(&a, &[]);
    assert_eq!(status, 200);
    assert_eq!(
        headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .map(String::as_str),
        Some("300")
    );
    let (status, body) = get(
        &a,
        &format!("{MD}/iam/security-credentials/role-a"),
        Some(&token_a),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(
        &b,
        &format!("{MD}/iam/security-credentials/role-b"),
        Some(&token_a),
    );
    assert_eq!(status, 401, "A's token presented by B");
    let (_, _, token_b) = put_token(&b, &[]);
    let (status, body) = get(
        &b,
        &format!("{MD}/iam/security-credentials/"),
        Some(&token_b),
    );
    assert_eq!((status, body.as_str()), (200, "role-b"));

    // The upstream requires tokens too: passthrough answers with the agent's own token.
    s.upstream.emulator.require_tokens(true);
    let (status, body) = get(&a, &format!("{MD}/instance-id"), Some(&token_a));
    assert_eq!((status, body.as_str()), (200, "i-0123456789abcdef0"));

    // Tokens never reach the logs.
    let logs = s.agent.raw_logs();
    for t in [&token_a, &token_b] {
        assert!(!logs.contains(t.as_str()), "token in the logs");
    }
    let descriptions = metadataproxy_tests::error_descriptions(&s.agent);
    assert!(descriptions.get("token_required").is_some_and(|n| *n >= 4));
    assert_eq!(descriptions.get("token_wrong_caller"), Some(&1));
    assert_eq!(descriptions.get("token_request_forwarded"), Some(&1));
}
