//! `GET /config/endpoints` on the admin port: the served tables' generation and build time,
//! then each cluster's endpoints, following snapshot swaps.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_snapshot::Version;
use support::{DataPlane, catch_all, cluster, free_port};

fn now_unix_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The answer's body (after the head).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap()
}

/// The `compiled_unix_ms=` value of the first line.
fn compiled_unix_ms(body: &str) -> u64 {
    let first = body.lines().next().unwrap();
    first.split(' ').find_map(|field| field.strip_prefix("compiled_unix_ms=")).unwrap().parse().unwrap()
}

#[test]
fn lists_each_clusters_endpoints_and_when_the_tables_were_built() {
    let port = free_port();
    let mut first = catch_all(port, 4001);
    first.version = Some(Version { generation: 1, content_hash: String::new() });
    first.clusters.push(cluster("b", &[]));
    let before_start = now_unix_ms();
    let plane = DataPlane::start(&first);

    let answer = plane.admin("/config/endpoints");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let text = body(&answer);
    let built = compiled_unix_ms(text);
    assert!(built >= before_start && built <= now_unix_ms(), "{text}");
    assert_eq!(
        text,
        format!("gateway=test/gw generation=1 compiled_unix_ms={built}\na 127.0.0.1:4001\nb\n"),
        "clusters sorted by name, one line each"
    );

    // A new endpoint: listed once the data plane has swapped in the new tables, built
    // after the file was written.
    let mut second = catch_all(port, 4001);
    second.version = Some(Version { generation: 2, content_hash: String::new() });
    second.clusters = vec![cluster("a", &[4001, 4002]), cluster("b", &[4003])];
    let written = now_unix_ms();
    plane.write_snapshot(&serde_json::to_string(&second).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let answer = plane.admin("/config/endpoints");
        let text = body(&answer).to_string();
        if text.contains("generation=2 ") {
            break text;
        }
        assert!(Instant::now() < deadline, "generation 2 was not applied: {text}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let built = compiled_unix_ms(&text);
    assert!(built >= written && built <= now_unix_ms(), "{text}");
    assert_eq!(
        text,
        format!(
            "gateway=test/gw generation=2 compiled_unix_ms={built}\na 127.0.0.1:4001 127.0.0.1:4002\nb 127.0.0.1:4003\n"
        )
    );
    // `/config` keeps its own format.
    assert!(plane.admin("/config").ends_with("gateway=test/gw generation=2\n"));
}

/// Started without allocator settings, the data plane runs with the ones its pods get
/// (mimalloc reads them at start: the binary starts itself again with them).
#[cfg(target_os = "linux")]
#[test]
fn runs_with_the_pods_allocator_settings_when_started_without() {
    let plane = DataPlane::start(&catch_all(free_port(), free_port()));
    let environ = std::fs::read(format!("/proc/{}/environ", plane.pid())).unwrap();
    let entries: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    for (name, value) in sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV {
        let entry = format!("{name}={value}");
        assert!(entries.contains(&entry.as_bytes()), "{entry} not in {}", String::from_utf8_lossy(&environ));
    }
}
