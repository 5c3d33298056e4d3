//! IMDSv2 end to end (classic mode): the AWS SDK's own IMDS credentials provider, run in a
//! container's network namespace and cgroup, against the agent with `IMDSV2=required`; tokens
//! bound to their container; passthrough to an upstream that requires tokens.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use metadataproxy_tests::{caller_identity, eventually, scratch_dir, Agent, Classic, Container};

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

/// Stops the setup's agent and starts another on the same port (the DNAT rule names it) with
/// `vars`, as a restart or an upgrade would.
fn restart(s: &mut Classic, vars: &[(&str, &str)]) {
    let port = s.agent.port.to_string();
    s.agent.stop("-TERM");
    let mut vars = vars.to_vec();
    vars.push(("PORT", &port));
    s.agent = Agent::start(&s.upstream.url(), &s.aws.url(), &vars);
}

/// The agent's start-up with `TOKEN_KEY_FILE=key`, expected to fail: its standard error.
fn start_up_failure(key: &std::path::Path) -> String {
    let key = key.to_str().expect("utf-8 path");
    Agent::start_up_failure(&[], &[("TOKEN_KEY_FILE", key)])
}

#[test]
fn held_tokens_stay_valid_across_agent_restarts() {
    let dir = scratch_dir("imdsv2-restart");
    // The directory is created by the agent, as /var/lib/metadataproxy would be.
    let key = dir.join("state").join("token.key");
    let key_var = key.to_str().expect("utf-8 path").to_string();
    let vars = [
        ("DEFAULT_ACCOUNT_ID", "123456789012"),
        ("IMDSV2", "required"),
        ("TOKEN_KEY_FILE", key_var.as_str()),
    ];
    let mut s = Classic::start("imdsv2-restart", 75, &vars);
    let a = s.container("imdsv2-restart-a", &[("IAM_ROLE", "role-a")]);
    let b = s.container("imdsv2-restart-b", &[("IAM_ROLE", "role-b")]);
    let creds = format!("{MD}/iam/security-credentials/role-a");

    let (status, _, token) = put_token(&a, &[]);
    assert_eq!(status, 200);
    assert_eq!(get(&a, &creds, Some(&token)).0, 200);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600, "the key file is private");
    assert_eq!(mode(key.parent().expect("dir")), 0o700);
    let text = std::fs::read_to_string(&key).expect("read the key file");
    assert!(
        !s.agent.raw_logs().contains(
            text.lines()
                .nth(1)
                .expect("current line")
                .rsplit(' ')
                .next()
                .unwrap()
        ),
        "the key never reaches the log"
    );

    // Restarted (an upgrade, a crash): the token A holds still works, for A only.
    restart(&mut s, &vars);
    assert!(eventually(Duration::from_secs(5), || s
        .agent
        .logs()
        .iter()
        .any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("IMDSv2 token key loaded")))
        .then_some(()))
    .is_some());
    let (status, body) = get(&a, &creds, Some(&token));
    assert_eq!(status, 200, "{body}");
    let proof: serde_json::Value = serde_json::from_str(&body).expect("credentials JSON");
    assert!(caller_identity(&s.env.moto_url, &proof).contains(":assumed-role/role-a/"));
    assert_eq!(
        get(
            &b,
            &format!("{MD}/iam/security-credentials/role-b"),
            Some(&token)
        )
        .0,
        401,
        "still bound to A"
    );
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        text,
        "not rewritten"
    );

    // Without the file the key dies with the agent: the held token gets 401.
    restart(&mut s, &[vars[0], vars[1], ("TOKEN_KEY_FILE", "none")]);
    assert_eq!(get(&a, &creds, Some(&token)).0, 401);
    // Back on the file: valid again.
    restart(&mut s, &vars);
    assert_eq!(get(&a, &creds, Some(&token)).0, 200);
    s.agent.stop("-TERM");

    // A key file others can read, a cut one, or a link: start-up stops and names it; the file
    // is left as it was (never replaced by a fresh key).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = start_up_failure(&key);
    assert!(
        err.contains(&format!("TOKEN_KEY_FILE={key_var}")) && err.contains("0644"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cut = dir.join("cut.key");
    std::fs::write(&cut, &text[..text.len() - 10]).expect("write");
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = start_up_failure(&cut);
    assert!(
        err.contains("TOKEN_KEY_FILE=") && err.contains("wrong size"),
        "{err}"
    );
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&key, &link).expect("symlink");
    assert!(start_up_failure(&link).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&key).expect("key"), text);
    let _ = std::fs::remove_dir_all(&dir);
}
