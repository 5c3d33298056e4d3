//! `STS=builtin` end to end: the agent binary on the real Docker engine, containers on the
//! default bridge calling it at docker0's address with busybox `wget`.
//!
//! The built-in STS makes no network call: the agent runs with test credentials and every AWS
//! endpoint variable pointing at a listener that records each connection, so that an SDK call
//! would land there; after every role format has been served, the listener has seen none. A
//! second agent, the same but with `STS=aws`, shows that the listener does see the SDK's calls
//! in this environment (the check can fail). Its answers take the same paths as STS's: the role
//! policy, the cache, the audit lines and the metrics.

use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{
    docker0_gateway, eventually, imds_time_seconds, test_env, Agent, ConnectionRecorder, Container,
};

/// `http://<docker0>:<port>/latest/meta-data` of `agent`.
fn metadata(agent: &Agent) -> String {
    format!(
        "http://{}:{}/latest/meta-data",
        docker0_gateway(),
        agent.port
    )
}

/// The agent of these tests: the built-in metadata service, `sts`, test credentials, and every
/// AWS endpoint (global, STS, IAM) at `recorder`.
fn agent(recorder: &ConnectionRecorder, sts: &str, extra: &[(&str, &str)]) -> Agent {
    let url = recorder.url();
    let mut vars = vec![
        ("STS", sts),
        ("AWS_ENDPOINT_URL_STS", url.as_str()),
        ("AWS_ENDPOINT_URL_IAM", url.as_str()),
    ];
    vars.extend_from_slice(extra);
    Agent::start("builtin", &url, &vars)
}

#[test]
fn the_builtin_sts_makes_no_network_call_and_takes_the_paths_sts_takes() {
    let env = test_env();
    let recorder = ConnectionRecorder::start();
    let agent = agent(
        &recorder,
        "builtin",
        &[
            ("ENABLE_PROMETHEUS", "true"),
            (
                "ALLOWED_ROLES",
                "arn:aws:iam::*:role/app-*,arn:aws:iam::*:role/team/app-*",
            ),
            ("ROLE_SESSION_DURATION", "2h"),
            ("BUILTIN_ACCOUNT_ID", "123456789012"),
        ],
    );
    let md = metadata(&agent);
    // Every role format: a bare name (through GetRole), name@account, path@account, an ARN.
    let cases = [
        (
            "bsts-bare",
            "app-bare",
            "arn:aws:iam::123456789012:role/app-bare",
        ),
        (
            "bsts-at",
            "app-at@210987654321",
            "arn:aws:iam::210987654321:role/app-at",
        ),
        (
            "bsts-path",
            "team/app-path@210987654321",
            "arn:aws:iam::210987654321:role/team/app-path",
        ),
        (
            "bsts-arn",
            "arn:aws:iam::111122223333:role/app-arn",
            "arn:aws:iam::111122223333:role/app-arn",
        ),
    ];
    let containers: Vec<(Container, &str, &str)> = cases
        .iter()
        .map(|(name, role, arn)| {
            (
                Container::start(&env, name, None, &[("IAM_ROLE", role)]),
                *role,
                *arn,
            )
        })
        .collect();
    let denied = Container::start(&env, "bsts-denied", None, &[("IAM_ROLE", "other-role")]);

    let mut served = Vec::new();
    for (c, role, arn) in &containers {
        let name = arn.rsplit('/').next().unwrap();
        let account = arn.split(':').nth(4).unwrap();
        let listing = c.wget(&format!("{md}/iam/security-credentials/"));
        assert_eq!(
            (listing.status, listing.body.as_str()),
            (200, name),
            "{role}"
        );
        let r = c.wget(&format!("{md}/iam/security-credentials/{name}"));
        assert_eq!(r.status, 200, "{role}: {}", agent.raw_logs());
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("credentials JSON");
        let key = v["AccessKeyId"].as_str().unwrap().to_string();
        assert!(key.starts_with("ASIALOCAL") && key.len() == 20, "{key}");
        assert!(v["SecretAccessKey"]
            .as_str()
            .unwrap()
            .starts_with("localfake"));
        assert!(v["Token"].as_str().unwrap().starts_with("FAKE/"));
        // ROLE_SESSION_DURATION is the session's length.
        let length = imds_time_seconds(v["Expiration"].as_str().unwrap())
            - imds_time_seconds(v["LastUpdated"].as_str().unwrap());
        assert_eq!(length, 7200, "{v}");
        let info = c.wget(&format!("{md}/iam/info"));
        let i: serde_json::Value = serde_json::from_str(&info.body).expect("info JSON");
        assert_eq!(
            i["InstanceProfileArn"],
            format!("arn:aws:sts::{account}:assumed-role/{name}/go-metadataproxy"),
            "{role}"
        );
        served.push((c.name.clone(), *arn, v));
    }
    // The role policy: refused, 404, and no AssumeRole.
    let r = denied.wget(&format!("{md}/iam/security-credentials/other-role"));
    assert_eq!(r.status, 404);

    // Audit: one line per container and set of credentials, with the role and the key.
    let audited = eventually(Duration::from_secs(5), || {
        let lines: Vec<serde_json::Value> = agent
            .logs()
            .into_iter()
            .filter(|l| l["message"] == "credentials issued")
            .collect();
        (lines.len() >= served.len()).then_some(lines)
    })
    .unwrap_or_else(|| panic!("audit lines: {}", agent.raw_logs()));
    for (name, arn, v) in &served {
        assert!(
            audited.iter().any(|l| l["container_name"] == name.as_str()
                && l["role_arn"] == *arn
                && l["access_key_id"] == v["AccessKeyId"]),
            "no audit line for {name} {arn}: {audited:?}"
        );
        // Secrets never reach the log.
        for secret in ["SecretAccessKey", "Token"] {
            let value = v[secret].as_str().unwrap();
            assert!(!agent.raw_logs().contains(value), "{secret} in the log");
        }
    }

    // Metrics: AssumeRole counted per role, the refusal counted, the cache used.
    let (_, exposition) = http_get(&agent.admin_addr(), "/metrics");
    for (_, arn, _) in &served {
        let name = arn.rsplit('/').next().unwrap();
        assert!(
            exposition
                .lines()
                .any(|l| l.starts_with("metadataproxy_sts_assume_role_total")
                    && l.contains(&format!("role_name=\"{name}\""))
                    && l.contains("result=\"ok\"")),
            "no AssumeRole count for {name}: {exposition}"
        );
    }
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("metadataproxy_role_not_allowed_total")
                && l.contains("role_name=\"other-role\"")),
        "{exposition}"
    );
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("metadataproxy_credential_cache_total")),
        "{exposition}"
    );
    // Readiness does not ask for AWS credentials the agent does not need.
    let (status, body) = http_get(&agent.admin_addr(), "/readyz");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(
        ready["checks"]["aws_credentials"]["ok"], true,
        "{status} {body}"
    );

    assert_eq!(
        recorder.connections(),
        Vec::<String>::new(),
        "the built-in STS made network calls"
    );
    drop(agent);

    // The control: the same environment with STS=aws reaches the recorder, so the silence
    // above is the built-in STS's, not a recorder that sees nothing.
    let control = self::agent(&recorder, "aws", &[]);
    let c = Container::start(&env, "bsts-control", None, &[("IAM_ROLE", "app-bare")]);
    let r = c.wget(&format!(
        "{}/iam/security-credentials/app-bare",
        metadata(&control)
    ));
    assert_eq!(r.status, 404, "the recorder answers nothing");
    let seen = eventually(Duration::from_secs(10), || {
        let seen = recorder.connections();
        (!seen.is_empty()).then_some(seen)
    });
    assert!(
        seen.is_some(),
        "STS=aws made no call to the recorder: {}",
        control.raw_logs()
    );
}
