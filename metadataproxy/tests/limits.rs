//! Limits on the proxy port, over loopback: per-caller request rate, request head size, slow
//! clients, connection caps, the Host check. Each shows its status and that another client is
//! served meanwhile.

mod common;

use std::time::Duration;

use common::{connect_from, raw_request_from, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GET: &str = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n";

/// Another caller (its own loopback address) is answered.
async fn other_client_is_served(h: &Harness) {
    let r = raw_request_from("127.0.0.9", h.addr, GET).await;
    assert_eq!(r.status, 200, "another client is served meanwhile");
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_and_others_are_served() {
    let h = Harness::start(
        &["--request-rate-limit", "2", "--request-rate-burst", "3"],
        None,
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(raw_request_from("127.0.0.2", h.addr, GET).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(&codes[..3], [200, 200, 200], "{codes:?}");
    assert!(codes[3..].contains(&429), "{codes:?}");
    let limited = statuses.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(limited.header("retry-after"), Some("1"));
    other_client_is_served(&h).await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_others_are_served() {
    let h = Harness::start(&["--max-header-bytes", "8192"], None).await;
    let big = format!(
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = raw_request_from("127.0.0.2", h.addr, &big).await;
    assert_eq!(r.status, 431);
    other_client_is_served(&h).await;
    assert!(h
        .upstream
        .recorded()
        .iter()
        .all(|r| !r.headers.contains_key("x-big")));
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_others_are_served() {
    let h = Harness::start(&["--header-read-timeout", "1s"], None).await;
    let mut slow = connect_from("127.0.0.2", h.addr).await;
    slow.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169")
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        // One byte every 200 ms: never a complete head.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"x").await.is_err() {
                break;
            }
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        buf
    });
    other_client_is_served(&h).await;
    let started = std::time::Instant::now();
    let answer = dripping.await.unwrap();
    // Cut off: the connection ended (possibly with a 408) long before the 10 s of dripping.
    assert!(started.elapsed() < Duration::from_secs(8));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let forwarded = h
        .upstream
        .recorded()
        .iter()
        .filter(|r| r.path_and_query == "/latest/meta-data/instance-id")
        .count();
    assert_eq!(
        forwarded, 1,
        "only the other client's request was forwarded"
    );
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_and_others_are_served() {
    let h = Harness::start(&["--max-connections-per-ip", "5"], None).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", h.addr).await);
    }
    // Let the agent accept the five.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect_from("127.0.0.2", h.addr).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the sixth connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    other_client_is_served(&h).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(raw_request_from("127.0.0.2", h.addr, GET).await.status, 200);
}

#[tokio::test]
async fn the_host_check_refuses_foreign_hosts() {
    let h = Harness::start(&["--check-host-header", "true"], None).await;
    let rebinding = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_request_from("127.0.0.2", h.addr, rebinding)
            .await
            .status,
        400
    );
    assert_eq!(raw_request_from("127.0.0.2", h.addr, GET).await.status, 200);
    // Off by default.
    let open = Harness::start(&[], None).await;
    assert_eq!(
        raw_request_from("127.0.0.2", open.addr, rebinding)
            .await
            .status,
        200
    );
}
