//! Loopback ports for the servers a test starts (data planes, controllers, backends).
//!
//! A port found free by binding to port 0 comes from the kernel's ephemeral range, the
//! range every outgoing connection takes its local port from: between the check and the
//! server's own bind (a process starting up), a connection of this or another test may
//! take it, and the server fails to start. Ports here come from below that range, one
//! different port per call in a process, starting at an offset drawn from the process id
//! (two test processes at once start far apart); each is checked free for TCP and UDP.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port tests use (above the usual fixed service ports).
const FIRST: u32 = 10_000;

pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = ephemeral_low().saturating_sub(FIRST).max(1_000);
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(FIRST + (offset + n) % span) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + span);
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}
