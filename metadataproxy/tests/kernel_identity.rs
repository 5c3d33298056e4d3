//! eBPF mode identity rules over loopback, with the kernel's records faked: a connection
//! without a record (a raw-socket handshake, which real components here cannot produce on
//! demand) and every combination of IP and cgroup answers. The end-to-end tests in `tests/`
//! cover the same rules on the real kernel.

mod common;

use std::sync::atomic::Ordering;

use common::{container, FakeKernel, Harness};
use metadataproxy::identity::Container;

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
const ID_A: &str = "0123456789abcdef0123456789abcdef";

fn other_container(role: &str) -> Container {
    Container::from_env(
        "fedcba9876543210fedcba9876543210".into(),
        "/other".into(),
        "img".into(),
        [format!("IAM_ROLE={role}").as_str()],
    )
}

/// Without a record the connection did not come through the kernel program (another host, a
/// raw socket): nothing is served, passthrough included.
#[tokio::test]
async fn no_kernel_record_is_404_on_every_route() {
    let kernel = FakeKernel::new(false, Some(ID_A));
    let h = Harness::start_with(
        &[],
        Some(container(Some("r@123456789012"), None)),
        Some(kernel),
    )
    .await;
    for path in [
        CREDS,
        "/latest/meta-data/iam/security-credentials/r",
        "/latest/meta-data/iam/info",
    ] {
        assert_eq!(h.get(path).await.status, 404, "{path}");
    }
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 0);
    assert_eq!(h.get("/latest/meta-data/instance-id").await.status, 404);
    assert!(h.upstream.recorded().is_empty());
}

#[tokio::test]
async fn ip_and_cgroup_naming_the_same_container_is_served() {
    let kernel = FakeKernel::new(true, Some(ID_A));
    let h = Harness::start_with(
        &[],
        Some(container(Some("r@123456789012"), None)),
        Some(kernel),
    )
    .await;
    assert_eq!(h.get(CREDS).await.text(), "r");
    assert_eq!(h.get(&format!("{CREDS}r")).await.status, 200);
}

#[tokio::test]
async fn ip_and_cgroup_naming_different_containers_is_refused() {
    // The peer IP is container A's, the connecting cgroup container B's.
    let kernel = FakeKernel::new(true, Some("fedcba9876543210fedcba9876543210"));
    let h = Harness::start_with(
        &[],
        Some(container(Some("victim@123456789012"), None)),
        Some(kernel),
    )
    .await;
    h.lookup.0.lock().unwrap().insert(
        "10.9.9.9".parse().unwrap(),
        other_container("attacker@123456789012"),
    );
    for path in [
        CREDS.to_string(),
        format!("{CREDS}victim"),
        "/latest/meta-data/iam/info".into(),
    ] {
        assert_eq!(h.get(&path).await.status, 404, "{path}");
    }
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_host_process_using_a_containers_ip_is_refused() {
    let kernel = FakeKernel::new(true, None);
    let h = Harness::start_with(
        &[],
        Some(container(Some("victim@123456789012"), None)),
        Some(kernel),
    )
    .await;
    assert_eq!(h.get(CREDS).await.status, 404);
    assert_eq!(h.sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_container_known_only_by_its_cgroup_gets_its_own_role() {
    // Host network: no container owns the peer IP; the cgroup names the container.
    let kernel = FakeKernel::new(true, Some("fedcba9876543210fedcba9876543210"));
    let h = Harness::start_with(&[], None, Some(kernel)).await;
    h.lookup.0.lock().unwrap().insert(
        "10.9.9.9".parse().unwrap(),
        other_container("hostnet@123456789012"),
    );
    assert_eq!(h.get(CREDS).await.text(), "hostnet");
    assert_eq!(h.get(&format!("{CREDS}hostnet")).await.status, 200);
}

#[tokio::test]
async fn neither_ip_nor_cgroup_naming_a_container_is_404() {
    let kernel = FakeKernel::new(true, None);
    let h = Harness::start_with(&[], None, Some(kernel)).await;
    assert_eq!(h.get(CREDS).await.status, 404);
}
