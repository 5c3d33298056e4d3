//! 2,000 concurrent connections on loopback against the agent binary while containers on a
//! real Docker engine fetch credentials: the agent stays up and answers them.

use std::time::Duration;

use metadataproxy_tests::sinks::http_get;
use metadataproxy_tests::{rt, Classic};
use tokio::io::AsyncWriteExt;

const MD: &str = "http://169.254.169.254/latest/meta-data";

/// Opens `count` connections to `port` from `sources` loopback addresses in turn, each with
/// half a request head sent; returns those the agent kept open.
fn open_connections(port: u16, sources: &[String], count: usize) -> Vec<tokio::net::TcpStream> {
    rt().block_on(async {
        let mut held = Vec::with_capacity(count);
        for i in 0..count {
            let src = &sources[i % sources.len()];
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(format!("{src}:0").parse().expect("addr"))
                .expect("bind a loopback source");
            let Ok(mut stream) = socket
                .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
                .await
            else {
                continue;
            };
            let _ = stream
                .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\n")
                .await;
            held.push(stream);
        }
        held
    })
}

fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    assert!(
        hard >= 4500,
        "this test needs 4,500 open files, the hard limit is {hard}"
    );
}

#[test]
fn two_thousand_connections_do_not_stop_legitimate_requests() {
    raise_open_files_limit();
    let mut s = Classic::start(
        "flood",
        73,
        &[
            ("DEFAULT_ACCOUNT_ID", "123456789012"),
            ("HEADER_READ_TIMEOUT", "30s"),
        ],
    );
    let c = s.container("flood", &[("IAM_ROLE", "flood-role")]);
    let url = format!("{MD}/iam/security-credentials/flood-role");
    assert_eq!(c.wget(&url).status, 200);

    // 2,000 from 20 addresses: under every cap, all held open by the agent.
    let sources: Vec<String> = (1..=20).map(|i| format!("127.0.1.{i}")).collect();
    let held = open_connections(s.agent.port, &sources, 2000);
    assert_eq!(held.len(), 2000, "all 2,000 connected");
    for _ in 0..20 {
        let r = c.wget(&url);
        assert_eq!(r.status, 200, "{}", s.agent.raw_logs().len());
    }
    let (status, _) = http_get(&s.agent.admin_addr(), "/healthz");
    assert_eq!(status, 200);

    // 2,000 more from one address: past MAX_CONNECTIONS_PER_IP (256) they are closed at once,
    // and the legitimate requests still pass.
    let one = vec!["127.0.2.1".to_string()];
    let more = open_connections(s.agent.port, &one, 2000);
    for _ in 0..20 {
        assert_eq!(c.wget(&url).status, 200);
    }
    assert!(s.agent.is_running(), "the agent is up");
    drop(held);
    drop(more);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.wget(&url).status, 200);
    assert!(s.agent.is_running());
    assert!(
        !s.agent.raw_logs().contains("panicked"),
        "no panic in the agent's logs"
    );
}
