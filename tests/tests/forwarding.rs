//! What the agent forwards and how it refuses, end to end: the agent binary, a real Docker
//! engine, real DNAT of `169.254.169.254:80`, and the emulator as a recording upstream. The
//! requests come from inside containers (host `curl` in the container's namespaces, busybox
//! `nc` and `wget` in the container), as an attacker in a container would send them.

use std::time::Duration;

use metadataproxy::testing::DISGUISES;
use metadataproxy_tests::{eventually, Classic, Container};

#[test]
fn disguised_paths_from_a_container_never_reach_the_upstream() {
    let s = Classic::start("fwd-disguise", 90, &[]);
    let c = s.container("fwd-disguise", &[("IAM_ROLE", "mine")]);
    // One curl per target, as sent (`--path-as-is`, raw request target), GET and PUT.
    let script = "for t in \"$@\"; do for m in GET PUT; do \
         curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 --path-as-is -X \"$m\" \
         -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' --request-target \"$t\" \
         http://169.254.169.254/; done; done";
    let mut args = vec!["-c", script, "sh"];
    args.extend_from_slice(DISGUISES);
    let out = c.run_inside("sh", &args);
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(codes.len(), DISGUISES.len() * 2, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| ["400", "404", "405"].contains(&c.as_str())),
        "{codes:?}"
    );
    let arrived: Vec<String> = s
        .upstream
        .emulator
        .recorded()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert!(arrived.is_empty(), "reached the upstream: {arrived:?}");
    // The agent answered each of them itself (its log reaches the test through a pipe: wait).
    let answered = eventually(Duration::from_secs(5), || {
        let not_canonical = s
            .agent
            .logs()
            .iter()
            .filter(|l| l["error_description"] == "path_not_canonical")
            .count();
        (not_canonical >= DISGUISES.len()).then_some(())
    });
    assert!(answered.is_some(), "{}", s.agent.raw_logs());
    // And the recorder does see what is forwarded: the canonical form.
    let (status, _, _) = c.curl(&[
        "--path-as-is",
        "http://169.254.169.254/latest/meta-data/network/interfaces/macs/02%3A29:96:8f:6a:2d/mac",
    ]);
    assert_eq!(status, 404, "the emulator has no such MAC");
    let arrived: Vec<String> = s
        .upstream
        .emulator
        .recorded()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        arrived,
        ["/latest/meta-data/network/interfaces/macs/02:29:96:8f:6a:2d/mac"]
    );
}

#[test]
fn duplicate_deciding_headers_are_400_and_odd_names_are_not_forwarded() {
    let s = Classic::start("fwd-headers", 91, &[("CHECK_HOST_HEADER", "true")]);
    let c = s.container("fwd-headers", &[]);
    let md = "http://169.254.169.254/latest/meta-data/ami-id";
    // Written raw (curl sends one of two custom headers of a name).
    for headers in [
        "Host: 169.254.169.254\\r\\nHost: evil.example",
        "Host: evil.example\\r\\nHost: 169.254.169.254",
        "Host: 169.254.169.254\\r\\nX-aws-ec2-metadata-token: a\\r\\nX-aws-ec2-metadata-token: b",
    ] {
        let answer = nc(
            &c,
            &format!("GET /latest/meta-data/ami-id HTTP/1.1\\r\\n{headers}\\r\\nConnection: close\\r\\n\\r\\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{headers}: {answer:?}");
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id:"),
            "{answer:?}"
        );
    }
    let (status, _, _) = c.curl(&[
        md,
        "-H",
        "X_aws_ec2_metadata_token: smuggled",
        "-H",
        "X_Forwarded_For: 10.9.9.9",
        "-H",
        "X-Plain: kept",
    ]);
    assert_eq!(status, 200);
    let rec = s.upstream.emulator.recorded();
    let got = rec
        .iter()
        .find(|r| r.path_and_query == "/latest/meta-data/ami-id")
        .expect("forwarded");
    assert_eq!(got.headers.get("x-plain").unwrap(), "kept");
    assert!(
        got.headers.keys().all(|k| !k.as_str().contains('_')),
        "{:?}",
        got.headers
    );
    // A token PUT that went through a proxy.
    for header in [
        "X-Real-IP: 10.0.0.1",
        "Forwarded: for=10.0.0.1",
        "Via: 1.1 p",
    ] {
        let (status, _, _) = c.curl(&[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            "-H",
            header,
            "http://169.254.169.254/latest/api/token",
        ]);
        assert_eq!(status, 400, "{header}");
    }
}

/// Sends `raw` to the metadata address with busybox `nc` from inside `c`; the answer.
fn nc(c: &Container, raw: &str) -> String {
    let out = c.exec(&[
        "sh",
        "-c",
        // busybox nc stops reading at the end of its input: keep the input open until the
        // agent closes the connection.
        "(printf \"$1\"; sleep 3) | timeout 5 nc 169.254.169.254 80",
        "sh",
        raw,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn parser_refusals_big_bodies_and_long_paths_are_answered_and_logged_within_bounds() {
    let s = Classic::start("fwd-bounds", 92, &[("BODY_READ_TIMEOUT", "30s")]);
    let c = s.container("fwd-bounds", &[]);
    // The HTTP parser's own refusals: no X-Request-ID (hyper writes them), but a log line.
    let answer = nc(&c, "GET / HTTP/9.9\\r\\nHost: a\\r\\n\\r\\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // A declared body over 64 KiB: 413 at once, long before the 30 s body timeout (nc gives
    // up after 5 s).
    let answer = nc(
        &c,
        "PUT /latest/meta-data/x HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 1000000\\r\\n\\r\\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // A 10 KB path (not canonical, so answered by the agent): the log line holds 256 bytes of
    // it and its length.
    let long = format!("/latest/meta-data/{}~", "a".repeat(10_000));
    let (status, _, _) = c.curl(&[&format!("http://169.254.169.254{long}")]);
    assert_eq!(status, 404);
    let logs = eventually(Duration::from_secs(5), || {
        let logs = s.agent.logs();
        let parser = logs.iter().any(|l| l["handler"] == "http-parser");
        let long = logs.iter().any(|l| l["path_bytes"] == long.len());
        (parser && long).then_some(logs)
    })
    .unwrap_or_else(|| panic!("lines missing: {}", s.agent.raw_logs()));
    let parser = logs.iter().find(|l| l["handler"] == "http-parser").unwrap();
    assert_eq!(parser["response_code"], 400);
    assert_eq!(parser["remote_addr"], c.ip.as_str());
    let cut = logs.iter().find(|l| l["path_bytes"] == long.len()).unwrap();
    assert_eq!(cut["path"].as_str().unwrap().len(), 256);
    let big = logs
        .iter()
        .find(|l| l["error_description"] == "body_too_large")
        .expect("a line for the 413");
    assert_eq!(big["response_code"], 413);
    assert!(s.upstream.emulator.recorded().is_empty());
}

#[test]
fn the_default_rate_stops_a_flooding_container_and_spares_the_others() {
    let s = Classic::start("fwd-rate", 93, &[]);
    let flooder = s.container("fwd-rate-a", &[]);
    let other = s.container("fwd-rate-b", &[]);
    // 600 requests on one keep-alive connection, as fast as curl sends them.
    let url = "http://169.254.169.254/latest/meta-data/ami-id";
    let mut args = vec!["-sS", "-w", "%{http_code}\\n", "--max-time", "60"];
    for _ in 0..600 {
        args.extend(["-o", "/dev/null", url]);
    }
    let out = flooder.run_inside("curl", &args);
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let refused = codes.lines().filter(|c| *c == "429").count();
    let served = codes.lines().filter(|c| *c == "200").count();
    assert_eq!(
        refused + served,
        600,
        "{codes} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(refused > 0, "no 429 at the default rate: {codes}");
    // Another container is served meanwhile.
    assert_eq!(other.wget(url).status, 200);
    // Refusals are counted, but logged at most once a second each (the lines reach the test
    // through a pipe: wait for the first).
    let logged = eventually(Duration::from_secs(5), || {
        let n = s
            .agent
            .logs()
            .iter()
            .filter(|l| l["response_code"] == 429)
            .count();
        (n > 0).then_some(n)
    })
    .unwrap_or(0);
    assert!(
        logged >= 1 && logged * 10 < refused,
        "{logged} lines for {refused} refusals"
    );
}

#[test]
fn with_tokens_required_refusals_and_redirects_need_a_token_too() {
    let s = Classic::start("fwd-v2", 94, &[("IMDSV2", "required")]);
    let c = s.container("fwd-v2", &[]);
    for target in [
        "/latest//meta-data/ami-id",
        "/favicon.ico",
        "/latest/meta-data./iam/info",
        "/latest/meta-data/ami-id",
    ] {
        let (status, _, _) = c.curl(&["--path-as-is", &format!("http://169.254.169.254{target}")]);
        assert_eq!(status, 401, "{target}");
    }
    let (status, _, token) = c.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    assert_eq!(status, 200);
    let (status, headers, _) = c.curl(&[
        "--path-as-is",
        "-H",
        &format!("X-aws-ec2-metadata-token: {token}"),
        "http://169.254.169.254/latest//meta-data/ami-id",
    ]);
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/latest/meta-data/ami-id");
}
