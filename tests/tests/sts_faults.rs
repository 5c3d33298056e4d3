//! STS failures moto cannot produce, end to end: a fault-injecting STS stub (HTTP, answering
//! what the AWS SDK parses) behind the agent, containers on a real Docker engine, iptables DNAT.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metadataproxy_tests::sinks::{
    form_value, http_get, sts_error, sts_success, HttpStub, Recorded,
};
use metadataproxy_tests::{eventually, Classic, Container};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// The AssumeRole calls the stub saw for `role` (by the role name at the end of the ARN).
fn calls_for(stub: &HttpStub, role: &str) -> Vec<Recorded> {
    stub.requests()
        .into_iter()
        .filter(|r| {
            form_value(&r.body, "Action").as_deref() == Some("AssumeRole")
                && form_value(&r.body, "RoleArn").is_some_and(|a| a.ends_with(&format!("/{role}")))
        })
        .collect()
}

fn role_of(r: &Recorded) -> String {
    form_value(&r.body, "RoleArn").unwrap_or_default()
}

#[test]
fn access_denied_is_counted_per_role_and_transient_errors_are_retried() {
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let counter = flaky_calls.clone();
    let stub = HttpStub::start(move |r| {
        let arn = role_of(r);
        if arn.ends_with("/denied-role") {
            sts_error(403, "AccessDenied")
        } else if arn.ends_with("/flaky-role") && counter.fetch_add(1, Ordering::SeqCst) < 2 {
            if counter.load(Ordering::SeqCst) == 1 {
                sts_error(503, "ServiceUnavailable")
            } else {
                sts_error(400, "Throttling")
            }
        } else {
            sts_success(&arn, Duration::from_secs(3600))
        }
    });
    let s = Classic::start_with_aws(
        "sts-denied",
        61,
        Some(&stub.url()),
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("ENABLE_PROMETHEUS", "true"),
            ("CREDENTIAL_PREFETCH", "false"),
        ],
    );
    let denied = s.container("sts-denied", &[("IAM_ROLE", "denied-role")]);
    let flaky = s.container("sts-flaky", &[("IAM_ROLE", "flaky-role")]);

    let r = flaky.wget(&format!("{MD}/iam/security-credentials/flaky-role"));
    assert_eq!(r.status, 200, "{}", s.agent.raw_logs());
    assert_eq!(
        calls_for(&stub, "flaky-role").len(),
        3,
        "a 503 and a throttle are retried, the third attempt succeeds"
    );

    for _ in 0..2 {
        let r = denied.wget(&format!("{MD}/iam/security-credentials/denied-role"));
        assert_eq!(r.status, 404);
    }
    assert_eq!(
        calls_for(&stub, "denied-role").len(),
        1,
        "AccessDenied is not retried, and the negative cache holds the second request"
    );

    let (_, exposition) = http_get(&s.agent.admin_addr(), "/metrics");
    assert!(
        exposition.contains(
            "metadataproxy_sts_assume_role_total{role_name=\"denied-role\",result=\"error\",error_code=\"AccessDenied\"} 1"
        ),
        "{exposition}"
    );
    assert!(
        exposition.contains(
            "metadataproxy_sts_assume_role_total{role_name=\"flaky-role\",result=\"error\",error_code=\"ServiceUnavailable\"} 1"
        ),
        "{exposition}"
    );
    assert!(
        exposition.contains(
            "metadataproxy_sts_assume_role_total{role_name=\"flaky-role\",result=\"ok\",error_code=\"\"} 1"
        ),
        "{exposition}"
    );
    assert!(
        exposition.contains("metadataproxy_credential_cache_total{result=\"backoff\"} 1"),
        "the second denied request met the negative cache: {exposition}"
    );
    let logged = s.agent.logs().into_iter().any(|l| {
        l["message"] == "AssumeRole failed"
            && l["role_name"] == "denied-role"
            && l["aws_error_code"] == "AccessDenied"
    });
    assert!(
        logged,
        "AccessDenied logged with the role: {}",
        s.agent.raw_logs()
    );
}

#[test]
fn throttled_calls_stay_under_the_rate_limit() {
    let stub = HttpStub::start(|_| sts_error(400, "Throttling"));
    let s = Classic::start_with_aws(
        "sts-throttle",
        62,
        Some(&stub.url()),
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("CREDENTIAL_PREFETCH", "false"),
            ("STS_RATE_LIMIT", "2"),
        ],
    );
    let containers: Vec<Container> = (0..4)
        .map(|i| {
            s.container(
                &format!("sts-throttle-{i}"),
                &[("IAM_ROLE", &format!("throttled-{i}"))],
            )
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, c) in containers.iter().enumerate() {
            scope.spawn(move || {
                let out = c.exec(&[
                    "timeout",
                    "20",
                    "wget",
                    "-S",
                    "-q",
                    "-O",
                    "-",
                    &format!("{MD}/iam/security-credentials/throttled-{i}"),
                ]);
                let r = metadataproxy_tests::parse_wget(&out);
                assert_eq!(r.status, 404, "throttled-{i}");
            });
        }
    });
    let mut at: Vec<_> = stub.requests().iter().map(|r| r.at).collect();
    at.sort();
    // Four requests, three attempts each (the first try and two retries), all throttled.
    assert_eq!(at.len(), 12, "{:?}", stub.requests().len());
    // A bucket of 2 refilled at 2 a second: any 4 consecutive calls span at least a second.
    for w in at.windows(4) {
        let span = w[3] - w[0];
        assert!(
            span >= Duration::from_millis(900),
            "4 calls within {span:?}: over STS_RATE_LIMIT=2"
        );
    }
}

#[test]
fn cached_credentials_outlive_a_failing_sts_until_expiry_minus_margin() {
    // Credentials valid for 75 s: with ROLE_CACHE_OFFSET=15m every request wants new ones,
    // and the cached set stays usable until 60 s before its expiry.
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let stub = HttpStub::start(move |r| {
        if fail.load(Ordering::SeqCst) {
            sts_error(500, "InternalFailure")
        } else {
            sts_success(&role_of(r), Duration::from_secs(75))
        }
    });
    let s = Classic::start_with_aws(
        "sts-stale",
        63,
        Some(&stub.url()),
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("CREDENTIAL_PREFETCH", "false"),
        ],
    );
    let c = s.container("sts-stale", &[("IAM_ROLE", "stale-role")]);
    let url = format!("{MD}/iam/security-credentials/stale-role");
    let first = c.wget(&url);
    assert_eq!(first.status, 200, "{}", s.agent.raw_logs());
    let key = |body: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(body).expect("credentials JSON");
        v["AccessKeyId"].as_str().expect("key").to_string()
    };
    let issued = key(&first.body);
    failing.store(true, Ordering::SeqCst);

    let again = c.wget(&url);
    assert_eq!(again.status, 200, "served while STS fails");
    assert_eq!(key(&again.body), issued, "the cached set, not a new one");

    // About 15 s after issuance the set is within 60 s of expiry: no longer served.
    let gone = eventually(Duration::from_secs(30), || {
        let r = c.wget(&url);
        match r.status {
            200 => {
                assert_eq!(key(&r.body), issued);
                None
            }
            status => Some(status),
        }
    })
    .expect("refused once the credentials are near expiry");
    assert_eq!(gone, 404);
    assert!(metadataproxy_tests::error_descriptions(&s.agent)
        .get("could_not_assume_role")
        .is_some_and(|n| *n >= 1));
}

#[test]
fn assume_role_is_signed_for_the_agents_region() {
    // The endpoint override (the stub) hides the regional host name; the signature's scope
    // still names the region the call was made for (the resolved URL: a unit test).
    let stub = HttpStub::start(|r| sts_success(&role_of(r), Duration::from_secs(3600)));
    let s = Classic::start_with_aws(
        "sts-region",
        64,
        Some(&stub.url()),
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("CREDENTIAL_PREFETCH", "false"),
            ("AWS_REGION", "eu-west-2"),
        ],
    );
    let c = s.container("sts-region", &[("IAM_ROLE", "region-role")]);
    let r = c.wget(&format!("{MD}/iam/security-credentials/region-role"));
    assert_eq!(r.status, 200, "{}", s.agent.raw_logs());
    let calls = calls_for(&stub, "region-role");
    assert_eq!(calls.len(), 1);
    let auth = calls[0]
        .headers
        .get("authorization")
        .expect("a signed request");
    assert!(
        auth.contains("/eu-west-2/sts/aws4_request"),
        "signature scope: {auth}"
    );
}
