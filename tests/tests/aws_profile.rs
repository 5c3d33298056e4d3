//! The "With an AWS profile" walkthrough of docs/deployment.md against moto: the agent started with
//! `AWS_PROFILE` (and nothing else of AWS's but `AWS_ENDPOINT_URL`, pointing at a counter in
//! front of moto instead of AWS) takes its credentials and region from the SDK's chain, and a
//! container gets working credentials for its role through the same path as on EC2.
//!
//! The profile files live in a temporary directory (`AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE`), with a `default` profile whose keys must not be used. Three
//! sources of the agent's own credentials: static keys in the credentials file, a
//! `credential_process` (aws-vault's way), and an ECS-style credentials server on loopback
//! (what `aws-vault exec --ecs-server` runs; a stand-in here, not aws-vault itself). The
//! counter records who signed each call (the SigV4 credential scope) for which region, and the
//! catcher on `169.254.169.254:80` that nothing reached the metadata address.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use metadataproxy::clock::format_time;
use metadataproxy_tests::readme;
use metadataproxy_tests::sinks::HttpStub;
use metadataproxy_tests::{
    assert_no_escape, caller_identity, catcher, create_role, docker0_gateway, serial, test_env,
    Agent, AwsCounter, TestEnv,
};

const AGENT: &str = "AWS_PROFILE=dev cargo run --release -p metadataproxy -- --metadata-url \
     builtin --host \"$BRIDGE_IP\" --port 8000";
const CONTAINER: &str = "docker run --rm -e IAM_ROLE=arn:aws:iam::123456789012:role/dev-app \
     busybox wget -qO- http://$BRIDGE_IP:8000/latest/meta-data/iam/security-credentials/dev-app";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/dev-app";

/// Profile files in a directory of their own, removed when dropped.
struct Profiles(PathBuf);

impl Profiles {
    fn write() -> Profiles {
        let dir = std::env::temp_dir().join(format!("mp-test-aws-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("profile directory");
        std::fs::write(
            dir.join("credentials"),
            "[default]\n\
             aws_access_key_id = AKIADEFAULTNOTUSED01\n\
             aws_secret_access_key = default-secret\n\
             \n\
             [dev]\n\
             aws_access_key_id = AKIADEVPROFILE000001\n\
             aws_secret_access_key = dev-secret\n",
        )
        .expect("credentials file");
        std::fs::write(
            dir.join("config"),
            "[default]\n\
             region = us-west-2\n\
             \n\
             [profile dev]\n\
             region = eu-west-1\n\
             \n\
             [profile vault]\n\
             region = eu-central-1\n\
             credential_process = printf '{\"Version\": 1, \"AccessKeyId\": \"AKIAVAULTPROCESS0001\", \"SecretAccessKey\": \"vault-secret\"}'\n",
        )
        .expect("config file");
        std::fs::write(
            dir.join("config-keyless"),
            "[profile dev]\nregion = eu-west-1\n",
        )
        .expect("keyless config file");
        Profiles(dir)
    }

    fn config(&self) -> String {
        self.0.join("config").display().to_string()
    }

    fn credentials(&self) -> String {
        self.0.join("credentials").display().to_string()
    }

    /// A config file with a region and no credentials.
    fn keyless_config(&self) -> String {
        self.0.join("config-keyless").display().to_string()
    }

    /// A credentials file that is not there.
    fn missing_credentials(&self) -> String {
        self.0.join("no-credentials").display().to_string()
    }
}

impl Drop for Profiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the agent as the README does, with `env` (the profile or the credentials server)
/// and `AWS_ENDPOINT_URL` at `aws`; `PATH` as a shell has it (a `credential_process` runs in
/// `sh`).
fn start_agent(bridge_ip: &str, aws: &AwsCounter, env: &[(&str, &str)]) -> Agent {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let endpoint = aws.url();
    let mut all = vec![
        ("PATH", path.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    all.extend_from_slice(env);
    readme::DEPLOYMENT.start_agent(
        AGENT,
        "AWS_PROFILE=dev cargo run --release -p metadataproxy -- ",
        bridge_ip,
        &all,
    )
}

/// A container gets working credentials for `dev-app` from `agent`, and every AWS call the
/// agent made was signed by `access_key` for `region`.
fn assert_served_as(
    env: &TestEnv,
    agent: &Agent,
    aws: &AwsCounter,
    bridge_ip: &str,
    access_key: &str,
    region: &str,
) {
    let out = readme::DEPLOYMENT.run_step(env, agent, bridge_ip, CONTAINER);
    assert!(
        out.status.success(),
        "{out:?}\nagent log: {}",
        agent.raw_logs()
    );
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).expect("credentials JSON");
    assert_eq!(
        caller_identity(&env.moto_url, &creds),
        "arn:aws:sts::123456789012:assumed-role/dev-app/go-metadataproxy"
    );
    assert!(
        aws.count_matching("AssumeRole", "dev-app") >= 1,
        "no AssumeRole reached moto"
    );
    let scopes = aws.credential_scopes();
    assert!(!scopes.is_empty());
    for scope in &scopes {
        let parts: Vec<&str> = scope.split('/').collect();
        assert_eq!(
            parts[0], access_key,
            "signed by another identity: {scopes:?}"
        );
        if parts.get(3) == Some(&"sts") {
            assert_eq!(parts[2], region, "STS called in another region: {scopes:?}");
        }
    }
}

#[test]
fn an_aws_profile_gives_containers_their_roles_credentials_through_the_same_path() {
    let _serial = serial();
    let env = test_env();
    // Nothing here may reach the metadata address, the agent's own lookups included: the
    // catcher on 169.254.169.254:80 (loopback) must stay empty.
    catcher().emulator.clear();
    let bridge_ip = docker0_gateway();
    assert_eq!(create_role(&env.moto_url, "dev-app", "/"), ROLE_ARN);
    let profiles = Profiles::write();
    let (config, credentials) = (profiles.config(), profiles.credentials());
    let files = [
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
    ];

    // Static keys of the `dev` profile, and its region; not the default profile's.
    let aws = AwsCounter::start(&env.moto_url);
    let mut agent = start_agent(
        &bridge_ip,
        &aws,
        &[&files[..], &[("AWS_PROFILE", "dev")]].concat(),
    );
    assert_served_as(
        &env,
        &agent,
        &aws,
        &bridge_ip,
        "AKIADEVPROFILE000001",
        "eu-west-1",
    );
    assert!(
        !agent.raw_logs().contains("FAKE"),
        "STS=aws says nothing of fake credentials"
    );
    agent.interrupt();

    // A `credential_process` profile (aws-vault's `export --format=json`, or the AWS CLI's
    // `configure export-credentials --format process` for SSO).
    let aws = AwsCounter::start(&env.moto_url);
    let mut agent = start_agent(
        &bridge_ip,
        &aws,
        &[&files[..], &[("AWS_PROFILE", "vault")]].concat(),
    );
    assert_served_as(
        &env,
        &agent,
        &aws,
        &bridge_ip,
        "AKIAVAULTPROCESS0001",
        "eu-central-1",
    );
    agent.interrupt();

    // An ECS-style credentials server on loopback, as `aws-vault exec --ecs-server` sets up:
    // its address and token, the region it exports, and profiles without keys (aws-vault keeps
    // them in its vault).
    let server = HttpStub::start(|r| {
        if r.headers.get("authorization").map(String::as_str) != Some("local-server-token") {
            return (401, "application/json", "{}".into());
        }
        let expiration = format_time(SystemTime::now() + Duration::from_secs(3600));
        let body = serde_json::json!({
            "AccessKeyId": "ASIAECSSERVER0000001",
            "SecretAccessKey": "ecs-server-secret",
            "Token": "ecs-server-token",
            "Expiration": expiration,
        });
        (200, "application/json", body.to_string())
    });
    let aws = AwsCounter::start(&env.moto_url);
    let full_uri = format!("{}/creds", server.url());
    let keyless = profiles.keyless_config();
    let missing = profiles.missing_credentials();
    let mut agent = start_agent(
        &bridge_ip,
        &aws,
        &[
            ("AWS_CONFIG_FILE", keyless.as_str()),
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_PROFILE", "dev"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "local-server-token"),
        ],
    );
    assert_served_as(
        &env,
        &agent,
        &aws,
        &bridge_ip,
        "ASIAECSSERVER0000001",
        "eu-north-1",
    );
    let asked = server.requests();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.path == "/creds"),
        "{asked:?}"
    );
    agent.interrupt();
    assert_no_escape();
}
