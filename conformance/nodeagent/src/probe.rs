//! Readiness probes, run from the host against the pod IP as kubelet does.
//! httpGet (HTTP; HTTPS is checked as a TCP connect), tcpSocket and grpc
//! (as a TCP connect); exec runs the command inside the pod's network
//! namespace with host binaries.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resolves an int-or-name port against the container's ports.
fn port(container: &Container, p: &IntOrString) -> Result<u16> {
    match p {
        IntOrString::Int(n) => Ok(u16::try_from(*n)?),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| u16::try_from(cp.container_port))
                .transpose()?
                .ok_or_else(|| anyhow::anyhow!("no container port named {name:?}"))
        }
    }
}

/// One probe attempt: Ok(()) on success.
pub async fn check(probe: &Probe, container: &Container, pod_ip: Ipv4Addr, netns: &str) -> Result<()> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let addr = SocketAddr::from((pod_ip, port(container, &h.port)?));
            if h.scheme.as_deref() == Some("HTTPS") {
                TcpStream::connect(addr).await?;
                return Ok(());
            }
            let path = h.path.as_deref().unwrap_or("/");
            let mut stream = TcpStream::connect(addr).await?;
            let mut request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n");
            for header in h.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", header.name, header.value));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(2).any(|w| w == b"\r\n") {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("connection closed before a status line");
                }
                head.extend_from_slice(&buf[..n]);
            }
            let status = parse_status(&head)?;
            if (200..400).contains(&status) {
                return Ok(());
            }
            bail!("HTTP probe returned {status}");
        }
        if let Some(t) = &probe.tcp_socket {
            TcpStream::connect(SocketAddr::from((pod_ip, port(container, &t.port)?))).await?;
            return Ok(());
        }
        if let Some(g) = &probe.grpc {
            TcpStream::connect(SocketAddr::from((pod_ip, u16::try_from(g.port)?))).await?;
            return Ok(());
        }
        if let Some(e) = &probe.exec {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                bail!("exec probe without a command");
            }
            let status = tokio::process::Command::new("ip")
                .args(["netns", "exec", netns])
                .args(&command)
                .kill_on_drop(true)
                .status()
                .await?;
            if status.success() {
                return Ok(());
            }
            bail!("exec probe exited with {status}");
        }
        bail!("probe has no handler")
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => bail!("probe timed out after {timeout:?}"),
    }
}

fn parse_status(head: &[u8]) -> Result<u16> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ => bail!("malformed status line {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn named_and_numeric_ports() {
        let c = Container {
            ports: Some(vec![ContainerPort { name: Some("admin".into()), container_port: 9901, ..Default::default() }]),
            ..Default::default()
        };
        assert_eq!(port(&c, &IntOrString::Int(80)).unwrap(), 80);
        assert_eq!(port(&c, &IntOrString::String("admin".into())).unwrap(), 9901);
        assert!(port(&c, &IntOrString::String("nope".into())).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n").unwrap(), 204);
        assert!(parse_status(b"SSH-2.0\r\n").is_err());
    }
}
