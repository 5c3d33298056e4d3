//! Classic mode end to end: the agent binary, a real Docker engine, real iptables DNAT of
//! `169.254.169.254:80`, moto as STS and IAM, and the emulator as a recording upstream.
//! Containers call the metadata address with busybox `wget`, as any workload would.

use std::time::Duration;

use metadataproxy::testing::{CREDENTIAL_KEYS, IAM_PATHS};
use metadataproxy_tests::{
    caller_identity, create_role, docker0_gateway, error_descriptions, eventually, test_env, Agent,
    AwsCounter, Classic, Container, FakeUpstream, Network, Rule,
};

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// Checks the credentials JSON byte for byte against the contract's shape and returns it.
fn assert_contract_credentials(body: &str) -> serde_json::Value {
    assert!(body.ends_with("}\n"), "trailing newline: {body:?}");
    let v: serde_json::Value = serde_json::from_str(body).expect("credentials JSON");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, CREDENTIAL_KEYS);
    // serde_json sorts keys on its own; the raw order and indent are checked here.
    let mut expected = String::from("{\n");
    for (i, k) in keys.iter().enumerate() {
        let sep = if i + 1 == keys.len() { "" } else { "," };
        expected.push_str(&format!("  \"{k}\": {}{sep}\n", v[*k]));
    }
    expected.push_str("}\n");
    assert_eq!(body, expected);
    assert_eq!(v["Code"], "Success");
    assert_eq!(v["Type"], "AWS-HMAC");
    for k in ["Expiration", "LastUpdated"] {
        let t = v[k].as_str().unwrap();
        assert_eq!(t.len(), 20, "{k}={t}: YYYY-MM-DDTHH:MM:SSZ");
        assert!(t.ends_with('Z') && &t[10..11] == "T", "{k}={t}");
    }
    assert!(v["Expiration"].as_str() > v["LastUpdated"].as_str());
    v
}

/// Lists, fetches and verifies the credentials of `c`, whose role is `name` in `account`.
fn assert_gets_role(moto: &str, c: &Container, name: &str, account: &str) {
    let listing = c.wget(&format!("{MD}/iam/security-credentials/"));
    assert_eq!(listing.status, 200, "{}: listing", c.name);
    assert_eq!(listing.body, name, "{}: listing", c.name);

    let creds = c.wget(&format!("{MD}/iam/security-credentials/{name}"));
    assert_eq!(creds.status, 200, "{}: credentials", c.name);
    let v = assert_contract_credentials(&creds.body);

    let info = c.wget(&format!("{MD}/iam/info"));
    assert_eq!(info.status, 200, "{}: info", c.name);
    assert!(info.body.ends_with("}\n"));
    let i: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    let keys: Vec<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "Code",
            "InstanceProfileArn",
            "InstanceProfileId",
            "LastUpdated"
        ]
    );
    let assumed = format!("arn:aws:sts::{account}:assumed-role/{name}/go-metadataproxy");
    assert_eq!(i["InstanceProfileArn"], assumed.as_str(), "{}", c.name);
    assert!(i["InstanceProfileId"]
        .as_str()
        .unwrap()
        .ends_with(":go-metadataproxy"));

    // The credentials work: STS says who they are.
    assert_eq!(caller_identity(moto, &v), assumed, "{}", c.name);
}

#[test]
fn every_role_format_on_default_bridge_and_user_network() {
    let s = Classic::start("formats", 11, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent, aws, upstream) = (&s.env, &s.net, &s.agent, &s.aws, &s.upstream);

    let bare = Container::start(
        env,
        "formats-bare",
        Some(&net.name),
        &[("IAM_ROLE", "bare-role")],
    );
    let at = Container::start(
        env,
        "formats-at",
        Some(&net.name),
        &[("IAM_ROLE", "at-role@210987654321")],
    );
    let path_at = Container::start(
        env,
        "formats-path-at",
        Some(&net.name),
        &[("IAM_ROLE", "team/sub/path-role@123456789012")],
    );
    let arn = Container::start(
        env,
        "formats-arn",
        Some(&net.name),
        &[(
            "IAM_ROLE",
            "arn:aws:iam::123456789012:role/arn-path/arn-role",
        )],
    );
    // One on the default bridge, reached through its own DNAT rule on docker0.
    let bridged = Container::start(env, "formats-bridge", None, &[("IAM_ROLE", "bridge-role")]);
    let _dnat_bridge = Rule::dnat(
        "docker0",
        &format!("{}/32", bridged.ip),
        &docker0_gateway(),
        agent.port,
    );

    assert_gets_role(&env.moto_url, &bare, "bare-role", "123456789012");
    assert_gets_role(&env.moto_url, &at, "at-role", "210987654321");
    assert_gets_role(&env.moto_url, &path_at, "path-role", "123456789012");
    assert_gets_role(&env.moto_url, &arn, "arn-role", "123456789012");
    assert_gets_role(&env.moto_url, &bridged, "bridge-role", "123456789012");

    // With DEFAULT_ACCOUNT_ID no role needed iam:GetRole; info reused the cached credentials.
    assert_eq!(aws.count("GetRole"), 0);
    // One AssumeRole per role (prefetched when the container started, or at the first
    // request): the listing, the credentials and info share it.
    for role in [
        "bare-role",
        "at-role",
        "path-role",
        "arn-role",
        "bridge-role",
    ] {
        assert_eq!(
            aws.count_matching("AssumeRole", &format!("%2F{role}&")),
            1,
            "{role}"
        );
    }
    // The agent saw each container by its own address, and nothing went upstream.
    assert!(upstream.emulator.recorded().is_empty());
    let seen: Vec<String> = agent
        .logs()
        .iter()
        .filter_map(|l| l["container_name"].as_str().map(str::to_string))
        .collect();
    for c in [&bare, &at, &path_at, &arn, &bridged] {
        assert!(seen.contains(&c.name), "{} not in the agent's logs", c.name);
    }
}

#[test]
fn bare_name_without_default_account_is_resolved_with_get_role() {
    let env = test_env();
    let role_arn = create_role(&env.moto_url, "looked-up-role", "/team/");
    assert!(
        role_arn.ends_with(":role/team/looked-up-role"),
        "{role_arn}"
    );
    let account = role_arn.split(':').nth(4).unwrap().to_string();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let agent = Agent::start(&upstream.url(), &aws.url(), &[]);
    let net = Network::create("getrole", 12);
    let _dnat = Rule::dnat("br-+", &net.subnet, &net.gateway, agent.port);
    let c = Container::start(
        &env,
        "getrole",
        Some(&net.name),
        &[("IAM_ROLE", "looked-up-role")],
    );

    assert_gets_role(&env.moto_url, &c, "looked-up-role", &account);
    // Listing, credentials and info: the role was looked up once.
    assert_eq!(aws.count_matching("GetRole", "RoleName=looked-up-role"), 1);
    // A role name that does not exist: 404, with the reason in the logs.
    let missing = Container::start(
        &env,
        "getrole-missing",
        Some(&net.name),
        &[("IAM_ROLE", "no-such-role")],
    );
    let r = missing.wget(&format!("{MD}/iam/security-credentials/no-such-role"));
    assert_eq!(r.status, 404);
    assert_eq!(
        error_descriptions(&agent).get("could_not_resolve_role"),
        Some(&1),
        "{}",
        agent.raw_logs()
    );
}

#[test]
fn no_role_is_404_without_default_role_and_the_default_with_it() {
    let env = test_env();
    let upstream = FakeUpstream::start();
    let aws = AwsCounter::start(&env.moto_url);
    let plain = Agent::start(&upstream.url(), &aws.url(), &[]);
    let with_default = Agent::start(
        &upstream.url(),
        &aws.url(),
        &[("DEFAULT_ROLE", "fallback-role@123456789012")],
    );
    let net_plain = Network::create("norole", 13);
    let net_default = Network::create("defaultrole", 14);
    let _a = Rule::dnat("br-+", &net_plain.subnet, &net_plain.gateway, plain.port);
    let _b = Rule::dnat(
        "br-+",
        &net_default.subnet,
        &net_default.gateway,
        with_default.port,
    );
    let c1 = Container::start(&env, "norole", Some(&net_plain.name), &[]);
    let c2 = Container::start(&env, "defaultrole", Some(&net_default.name), &[]);

    assert_eq!(
        c1.wget(&format!("{MD}/iam/security-credentials/")).status,
        404
    );
    assert_eq!(c1.wget(&format!("{MD}/iam/info")).status, 404);
    assert_eq!(error_descriptions(&plain).get("no_role"), Some(&2));

    assert_gets_role(&env.moto_url, &c2, "fallback-role", "123456789012");
    // Passthrough works for both.
    let id = c1.wget(&format!("{MD}/instance-id"));
    assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));
}

#[test]
fn another_roles_name_is_404_and_makes_no_sts_call() {
    let s = Classic::start("mismatch", 15, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent, aws, upstream) = (&s.env, &s.net, &s.agent, &s.aws, &s.upstream);
    let c = Container::start(env, "mismatch", Some(&net.name), &[("IAM_ROLE", "mine")]);

    for role in ["theirs", "Mine", "mine-2", "admin"] {
        let r = c.wget(&format!("{MD}/iam/security-credentials/{role}"));
        assert_eq!(r.status, 404, "{role}");
        assert_eq!(aws.count_matching("AssumeRole", &format!("%2F{role}&")), 0);
    }
    assert_eq!(
        error_descriptions(agent).get("role_names_do_not_match"),
        Some(&4)
    );
    assert!(upstream.emulator.recorded().is_empty());
}

#[test]
fn no_iam_path_from_a_container_reaches_the_upstream() {
    let s = Classic::start("iampaths", 16, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let (env, net, agent, upstream) = (&s.env, &s.net, &s.agent, &s.upstream);
    let c = Container::start(env, "iampaths", Some(&net.name), &[("IAM_ROLE", "mine")]);

    for path in IAM_PATHS {
        let r = c.wget(&format!("http://169.254.169.254{path}"));
        assert!(
            [200, 404].contains(&r.status),
            "{path}: got {} (0 = no answer)",
            r.status
        );
    }
    let iam_requests: Vec<String> = upstream
        .emulator
        .recorded()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert!(
        iam_requests.is_empty(),
        "reached upstream: {iam_requests:?}"
    );
    // Every path was answered by the agent itself (wget follows the 301s).
    let answered = agent
        .logs()
        .iter()
        .filter(|l| l["message"] == "request")
        .count();
    assert!(answered >= IAM_PATHS.len(), "{}", agent.raw_logs());
    // And the recording does work: a passthrough path arrives.
    assert_eq!(c.wget(&format!("{MD}/ami-id")).status, 200);
    let rec = upstream.emulator.recorded();
    assert_eq!(
        rec.iter()
            .filter(|r| r.path_and_query == "/latest/meta-data/ami-id")
            .count(),
        1
    );
    // Besides it, only the agent's own IMDSv2 token request.
    assert!(rec
        .iter()
        .all(|r| r.path_and_query == "/latest/meta-data/ami-id"
            || (r.method == "PUT" && r.path_and_query == "/latest/api/token")));
}

#[test]
fn passthrough_from_a_container_keeps_headers_and_adds_no_forwarded_for() {
    let s = Classic::start("passthrough", 17, &[]);
    let (env, net, upstream) = (&s.env, &s.net, &s.upstream);
    let c = Container::start(env, "passthrough", Some(&net.name), &[]);

    let r = c.wget("http://169.254.169.254/latest/meta-data/placement/region?x=1");
    assert_eq!((r.status, r.body.as_str()), (200, "us-east-1"));
    // An IMDSv2 token PUT, written raw with nc (busybox wget cannot PUT): the agent answers it.
    let out = c.exec(&[
        "sh",
        "-c",
        // busybox nc stops reading at the end of its input: keep the input open until
        // the agent closes the connection.
        "(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
         X-aws-ec2-metadata-token-ttl-seconds: 300\\r\\nContent-Length: 0\\r\\n\
         Connection: close\\r\\n\\r\\n'; sleep 3) | timeout 5 nc 169.254.169.254 80",
    ]);
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 300"),
        "{answer}"
    );
    let token = answer.rsplit("\r\n").next().unwrap().to_string();
    assert!(!token.is_empty(), "{answer}");
    let got = c.exec(&[
        "timeout",
        "5",
        "wget",
        "-q",
        "-O",
        "-",
        "--header",
        &format!("X-aws-ec2-metadata-token: {token}"),
        "http://169.254.169.254/latest/meta-data/instance-id",
    ]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "i-0123456789abcdef0");

    let rec = eventually(Duration::from_secs(2), || {
        let r = upstream.emulator.recorded();
        (r.len() == 3).then_some(r)
    })
    .expect("three requests upstream");
    // The agent's own token, fetched once, then both GETs with it; the container's PUT
    // stayed with the agent and its token was not forwarded.
    assert_eq!(rec[0].method, "PUT");
    assert_eq!(
        rec[0].headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
    assert_eq!(
        rec[1].path_and_query,
        "/latest/meta-data/placement/region?x=1"
    );
    assert_eq!(rec[2].path_and_query, "/latest/meta-data/instance-id");
    let upstream_token = &rec[2].headers["x-aws-ec2-metadata-token"];
    assert_ne!(upstream_token, token.as_str());
    assert_eq!(&rec[1].headers["x-aws-ec2-metadata-token"], upstream_token);
    for r in &rec {
        assert!(
            !r.headers.contains_key("x-forwarded-for"),
            "{:?}",
            r.headers
        );
        // The upstream sees the agent, not the container.
        assert!(r.peer.unwrap().ip().is_loopback());
    }
}

#[test]
fn hundred_concurrent_first_requests_make_one_assume_role_per_external_id() {
    // Without prefetch, so that the 100 requests are the first for the role.
    let s = Classic::start(
        "concurrent",
        18,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("CREDENTIAL_PREFETCH", "false"),
        ],
    );
    let (env, net, agent, aws) = (&s.env, &s.net, &s.agent, &s.aws);
    let a = Container::start(
        env,
        "concurrent-a",
        Some(&net.name),
        &[("IAM_ROLE", "shared-role"), ("IAM_EXTERNAL_ID", "tenant-a")],
    );
    let b = Container::start(
        env,
        "concurrent-b",
        Some(&net.name),
        &[("IAM_ROLE", "shared-role"), ("IAM_EXTERNAL_ID", "tenant-b")],
    );
    // 100 requests at once from inside the container; each writes its body to its own file.
    let script = format!(
        "for i in $(seq 100); do timeout 10 wget -q -O /tmp/c$i {MD}/iam/security-credentials/shared-role & done; wait; \
         cat /tmp/c* | grep -c AccessKeyId; cat /tmp/c* | grep AccessKeyId | sort -u | wc -l"
    );
    let out = a.exec(&["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let counts: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(
        counts,
        ["100", "1"],
        "100 answers, one access key: {stdout}"
    );
    let shared = "%2Fshared-role&";
    assert_eq!(
        aws.count_matching("AssumeRole", shared),
        1,
        "{}",
        agent.raw_logs()
    );

    // Same role, another external id: a cache entry of its own.
    let other = b.wget(&format!("{MD}/iam/security-credentials/shared-role"));
    assert_eq!(other.status, 200);
    assert_eq!(aws.count_matching("AssumeRole", shared), 2);
    let again = a.wget(&format!("{MD}/iam/security-credentials/shared-role"));
    assert_ne!(again.body, other.body);
    assert_eq!(aws.count_matching("AssumeRole", shared), 2);
    let forms: Vec<String> = aws
        .forms("AssumeRole")
        .into_iter()
        .filter(|f| f.contains(shared))
        .collect();
    assert!(forms[0].contains("ExternalId=tenant-a"), "{}", forms[0]);
    assert!(forms[1].contains("ExternalId=tenant-b"), "{}", forms[1]);
    for f in &forms {
        assert!(f.contains("RoleSessionName=go-metadataproxy"), "{f}");
        assert!(f.contains("DurationSeconds=3600"), "{f}");
        assert!(
            f.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fshared-role"),
            "{f}"
        );
    }
}

/// The weakness the eBPF mode closes: in classic mode identity is the source IP alone, so a
/// container with NET_ADMIN that takes another container's IP gets that container's role.
#[test]
fn classic_mode_gives_a_forged_ip_the_victims_role() {
    let s = Classic::start("forged", 19, &[("DEFAULT_ACCOUNT_ID", "123456789012")]);
    let victim = s.container("classic-victim", &[("IAM_ROLE", "victim-role")]);
    let attacker = Container::start_privileged(
        &s.env,
        "classic-attacker",
        Some(&s.net.name),
        &[("IAM_ROLE", "attacker-role")],
        &["--cap-add", "NET_ADMIN"],
    );
    assert_eq!(
        victim.wget(&format!("{MD}/iam/security-credentials/")).body,
        "victim-role"
    );
    attacker.take_ip_of(&victim, &s.net.gateway);
    let stolen = attacker.wget(&format!("{MD}/iam/security-credentials/victim-role"));
    assert_eq!(stolen.status, 200, "classic mode trusts the source IP");
    assert!(stolen.body.contains("AccessKeyId"));
    assert!(s
        .agent
        .logs()
        .iter()
        .any(|l| l["role_name"] == "victim-role"
            && l["container_name"] == "mp-test-classic-victim"
            && l["response_code"] == 200
            && l["handler"] == "iam-security-crentials-for-role"));
}
