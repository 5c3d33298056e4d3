//! The container index and credential prefetch, end to end: a real Docker engine (behind a
//! proxy that counts the agent's API calls), moto behind a counter, iptables DNAT.

use std::time::Duration;

use metadataproxy_tests::{eventually, Classic, Container, DockerSocket};

const MD: &str = "http://169.254.169.254/latest/meta-data";

#[test]
fn a_warm_index_answers_without_docker_or_sts_calls_and_credentials_are_prefetched() {
    let docker = DockerSocket::counting("warm");
    let s = Classic::start(
        "index-warm",
        31,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("DOCKER_URL", &docker.url()),
        ],
    );
    let (env, net, agent, aws) = (&s.env, &s.net, &s.agent, &s.aws);
    let c = Container::start(
        env,
        "index-warm",
        Some(&net.name),
        &[("IAM_ROLE", "warm-role")],
    );

    // The start event leads to a prefetch before the container asks anything.
    let role = "%2Fwarm-role&";
    eventually(Duration::from_secs(10), || {
        (aws.count_matching("AssumeRole", role) == 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "credentials prefetched at start: {}\n{:?}",
            agent.raw_logs(),
            docker.requests()
        )
    });
    eventually(Duration::from_secs(10), || {
        agent
            .logs()
            .iter()
            .any(|l| {
                l["message"] == "credentials prefetched"
                    && l["container_name"] == "mp-test-index-warm"
            })
            .then_some(())
    })
    .expect("the prefetch is logged");

    let docker_before = docker.requests().len();
    for _ in 0..3 {
        let r = c.wget(&format!("{MD}/iam/security-credentials/warm-role"));
        assert_eq!(r.status, 200);
        assert_eq!(c.wget(&format!("{MD}/iam/info")).status, 200);
        assert_eq!(
            c.wget(&format!("{MD}/iam/security-credentials/")).body,
            "warm-role"
        );
    }
    let during: Vec<String> = docker.requests()[docker_before..].to_vec();
    // The index may follow other tests' containers meanwhile (events, inspects); a lookup
    // would be a container listing or an inspect of this container.
    let lookups: Vec<&String> = during
        .iter()
        .filter(|r| r.contains("/containers/json") && !r.contains("/containers/json?all"))
        .chain(
            during
                .iter()
                .filter(|r| r.contains(&format!("/containers/{}", c.name))),
        )
        .collect();
    assert!(
        lookups.is_empty(),
        "Docker calls on the hot path: {lookups:?}"
    );
    assert_eq!(
        aws.count_matching("AssumeRole", role),
        1,
        "nine requests, no STS call beyond the prefetch"
    );
    // The counter does see the agent's Docker traffic (sync, events).
    assert!(docker.requests().iter().any(|r| r.contains("/events")));
}

#[test]
fn an_ip_reused_by_a_new_container_maps_to_the_new_one_only() {
    let s = Classic::start("index-reuse", 32, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent) = (&s.env, &s.net, &s.agent);
    let ip = "172.30.32.50";
    let a = Container::start_privileged(
        env,
        "index-reuse-a",
        Some(&net.name),
        &[("IAM_ROLE", "role-a")],
        &["--ip", ip],
    );
    assert_eq!(
        a.wget(&format!("{MD}/iam/security-credentials/")).body,
        "role-a"
    );
    drop(a);
    let b = Container::start_privileged(
        env,
        "index-reuse-b",
        Some(&net.name),
        &[("IAM_ROLE", "role-b")],
        &["--ip", ip],
    );
    assert_eq!(b.ip, ip);
    // Immediately: the new container's role, never the old one's.
    assert_eq!(
        b.wget(&format!("{MD}/iam/security-credentials/")).body,
        "role-b"
    );
    let creds = b.wget(&format!("{MD}/iam/security-credentials/role-b"));
    assert_eq!(creds.status, 200);
    assert_eq!(
        b.wget(&format!("{MD}/iam/security-credentials/role-a"))
            .status,
        404
    );
    let requests: Vec<serde_json::Value> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "request" && l["remote_addr"] == ip)
        .collect();
    let by_a = requests
        .iter()
        .filter(|l| l["container_name"] == "mp-test-index-reuse-a")
        .count();
    assert_eq!(by_a, 1, "only A's own request is attributed to A");
    assert_eq!(requests.len(), 4);
}

#[test]
fn session_name_duration_and_tags_reach_sts() {
    let s = Classic::start(
        "index-session",
        33,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("ROLE_SESSION_NAME", "mp-{container_name}"),
            ("ROLE_SESSION_DURATION", "2h"),
            ("ROLE_SESSION_TAGS", "true"),
            ("CREDENTIAL_PREFETCH", "false"),
        ],
    );
    let (env, net, agent, aws) = (&s.env, &s.net, &s.agent, &s.aws);
    let c = Container::start(
        env,
        "index-session",
        Some(&net.name),
        &[("IAM_ROLE", "session-role")],
    );
    let creds = c.wget(&format!("{MD}/iam/security-credentials/session-role"));
    assert_eq!(creds.status, 200, "{}", agent.raw_logs());
    let forms: Vec<String> = aws
        .forms("AssumeRole")
        .into_iter()
        .filter(|f| f.contains("%2Fsession-role&"))
        .collect();
    assert_eq!(forms.len(), 1);
    let form = &forms[0];
    for expected in [
        "RoleSessionName=mp-mp-test-index-session",
        "DurationSeconds=7200",
        "Tags.member.1.Key=ContainerId",
        "Tags.member.2.Key=ContainerName",
        "Tags.member.2.Value=mp-test-index-session",
        "Tags.member.3.Key=Image",
    ] {
        assert!(form.contains(expected), "{expected} missing from {form}");
    }
    let v: serde_json::Value = serde_json::from_str(&creds.body).unwrap();
    assert_eq!(
        metadataproxy_tests::caller_identity(&env.moto_url, &v),
        "arn:aws:sts::123456789012:assumed-role/session-role/mp-mp-test-index-session"
    );
}

/// 100 containers started and stopped in waves of 25 while each asks for its credentials ten
/// times from the moment it starts: every answer is the asking container's own role, and none
/// fails.
#[test]
fn churn_of_a_hundred_containers_gets_every_container_its_own_role() {
    let s = Classic::start("churn", 34, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent) = (&s.env, &s.net, &s.agent);
    let load = format!(
        "i=0; while [ $i -lt 10 ]; do \
         r=$(timeout 5 wget -q -O - {MD}/iam/security-credentials/ 2>/dev/null); \
         echo \"${{r:-FAILED}}\" >> /tmp/answers; i=$((i+1)); sleep 0.1; done; \
         echo done >> /tmp/answers; sleep 3600"
    );
    let start_wave = |wave: usize| -> Vec<(Container, String)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..5)
                .map(|t| {
                    let (env, net, load) = (&env, &net, &load);
                    scope.spawn(move || {
                        (0..5)
                            .map(|k| {
                                let n = wave * 25 + t * 5 + k;
                                let role = format!("churn-role-{n}");
                                let c = Container::start_command(
                                    env,
                                    &format!("churn-{n}"),
                                    Some(&net.name),
                                    &[("IAM_ROLE", &role)],
                                    &["sh", "-c", load],
                                );
                                (c, role)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("wave"))
                .collect()
        })
    };
    let check_wave = |wave: &[(Container, String)]| {
        for (c, role) in wave {
            let answers = eventually(Duration::from_secs(60), || {
                let out = c.exec(&["cat", "/tmp/answers"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                text.contains("done").then_some(text)
            })
            .unwrap_or_else(|| panic!("{} did not finish its requests", c.name));
            let lines: Vec<&str> = answers.lines().filter(|l| *l != "done").collect();
            assert_eq!(lines.len(), 10, "{}: {answers}", c.name);
            for line in lines {
                assert_eq!(line, role, "{} got another answer: {answers}", c.name);
            }
        }
    };
    let mut previous: Option<Vec<(Container, String)>> = None;
    for wave in 0..4 {
        let current = start_wave(wave);
        if let Some(done) = previous.take() {
            check_wave(&done);
            // Stopped while the next wave runs.
            drop(done);
        }
        previous = Some(current);
    }
    check_wave(&previous.take().expect("last wave"));
    let wrong: Vec<serde_json::Value> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "request" && l["response_code"] != 200)
        .collect();
    assert!(wrong.is_empty(), "failed requests: {wrong:?}");
}
