//! Passthrough and role policies and the audit log, end to end in classic mode: containers on
//! a real Docker engine, moto, iptables DNAT.

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::Classic;

const MD: &str = "http://169.254.169.254/latest";

#[test]
fn role_policy_by_label_and_arn_passthrough_policy_and_audit_lines() {
    let dir = std::env::temp_dir().join("mp-test-policy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("roles.json");
    std::fs::write(
        &policy,
        r#"{"rules": [{"roles": ["arn:aws:iam::123456789012:role/team-a/*"], "labels": {"team": "a"}}]}"#,
    )
    .unwrap();
    let audit = dir.join("audit.log");
    let (policy_s, audit_s) = (
        policy.to_string_lossy().into_owned(),
        audit.to_string_lossy().into_owned(),
    );
    let s = Classic::start(
        "policy",
        72,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("ALLOWED_ROLES", "arn:aws:iam::123456789012:role/shared"),
            ("ROLE_POLICY_FILE", &policy_s),
            ("AUDIT_LOG_FILE", &audit_s),
            ("ENABLE_PROMETHEUS", "true"),
        ],
    );
    let labelled = metadataproxy_tests::Container::start_privileged(
        &s.env,
        "policy-a",
        Some(&s.net.name),
        &[("IAM_ROLE", "team-a/web@123456789012")],
        &["--label", "team=a"],
    );
    let unlabelled = s.container("policy-b", &[("IAM_ROLE", "team-a/web@123456789012")]);
    let shared = s.container("policy-shared", &[("IAM_ROLE", "shared")]);

    // The role the label allows, the same role without the label, a role allowed for all.
    let creds = |c: &metadataproxy_tests::Container, role: &str| {
        c.wget(&format!("{MD}/meta-data/iam/security-credentials/{role}"))
    };
    let refused = creds(&unlabelled, "web");
    assert_eq!(refused.status, 404);
    let ok = creds(&labelled, "web");
    assert_eq!(ok.status, 200, "{}", s.agent.raw_logs());
    assert_eq!(creds(&shared, "shared").status, 200);
    assert_eq!(
        s.aws.count_matching("AssumeRole", "team-a%2Fweb"),
        1,
        "the refused container made no AssumeRole"
    );
    let descriptions = metadataproxy_tests::error_descriptions(&s.agent);
    assert!(descriptions
        .get("role_not_allowed")
        .is_some_and(|n| *n >= 1));
    let (_, exposition) = http_get(&s.agent.admin_addr(), "/metrics");
    assert!(
        exposition.contains("metadataproxy_role_not_allowed_total{role_name=\"web\"}"),
        "{exposition}"
    );

    // user-data is refused by default and never reaches the upstream; other paths pass.
    assert_eq!(labelled.wget(&format!("{MD}/user-data")).status, 404);
    assert_eq!(
        labelled.wget(&format!("{MD}/meta-data/instance-id")).status,
        200
    );
    assert!(s
        .upstream
        .emulator
        .recorded()
        .iter()
        .all(|r| !r.path_and_query.contains("user-data")));
    let (_, exposition) = http_get(&s.agent.admin_addr(), "/metrics");
    assert!(
        exposition.contains("metadataproxy_blocked_request_total{reason=\"passthrough_denied\"} 1"),
        "{exposition}"
    );

    // One audit line per issuance, in the file only, without secrets: the same credentials
    // served again to the same container are not a new issuance.
    let again = creds(&labelled, "web");
    assert_eq!(again.body, ok.body, "served from the cache");
    let issued: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON audit line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let a = lines
        .iter()
        .find(|l| l["container_name"] == "mp-test-policy-a")
        .expect("the labelled container's issuance");
    assert_eq!(a["role_arn"], "arn:aws:iam::123456789012:role/team-a/web");
    assert_eq!(a["access_key_id"], issued["AccessKeyId"]);
    assert_eq!(a["expiration"], issued["Expiration"]);
    assert_eq!(a["identity_source"], "ip");
    assert_eq!(a["image"], s.env.image.as_str());
    assert_eq!(a["remote_addr"], labelled.ip.as_str());
    assert!(a["container_id"].as_str().is_some_and(|id| id.len() == 64));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(issued["SecretAccessKey"].as_str().unwrap()));
    assert!(!text.contains(issued["Token"].as_str().unwrap()));
    assert!(
        !s.agent
            .logs()
            .iter()
            .any(|l| l["message"] == "credentials issued"),
        "with AUDIT_LOG_FILE, audit lines go to the file only"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
