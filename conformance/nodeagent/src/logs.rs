//! Container logs: stdout and stderr are captured line by line into CRI-format
//! files (`<RFC 3339 time> <stream> F <line>`), one per container under
//! `<state>/logs/<namespace>/<pod>/<container>.log`, and served over HTTPS on
//! the kubelet port, which is where the API server proxies `kubectl logs`
//! (`/containerLogs/{ns}/{pod}/{container}` with sinceTime, sinceSeconds,
//! timestamps, tailLines, limitBytes and follow).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::Agent;

/// Where a container's log lives.
pub fn path(state_dir: &Path, ns: &str, pod: &str, container: &str) -> PathBuf {
    state_dir.join("logs").join(ns).join(pod).join(format!("{container}.log"))
}

/// An open container log file, shared by its stdout and stderr readers.
pub type LogFile = Arc<Mutex<tokio::fs::File>>;

pub async fn open(path: &Path) -> Result<LogFile> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Arc::new(Mutex::new(file)))
}

/// Appends a line from the agent itself (start, exit) in the same format.
pub async fn note(file: &LogFile, line: &str) {
    let entry = format!("{} stderr F {line}\n", timestamp());
    let _ = file.lock().await.write_all(entry.as_bytes()).await;
}

fn timestamp() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string()
}

/// Copies one output stream into the log until it closes.
pub async fn capture(reader: impl AsyncRead + Unpin, stream: &'static str, file: LogFile) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        let mut entry = format!("{} {stream} F ", timestamp()).into_bytes();
        entry.extend_from_slice(&line);
        entry.push(b'\n');
        let _ = file.lock().await.write_all(&entry).await;
    }
}

/// The query of a log request.
#[derive(Debug, Default, PartialEq)]
struct Query {
    since: Option<jiff::Timestamp>,
    timestamps: bool,
    tail: Option<usize>,
    limit_bytes: Option<usize>,
    follow: bool,
    previous: bool,
}

fn parse_query(query: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let flag = v == "true" || v == "1";
        match k.as_ref() {
            "sinceTime" => {
                q.since = Some(v.parse().map_err(|e| format!("sinceTime {v:?}: {e}"))?);
            }
            "sinceSeconds" => {
                let secs: i64 = v.parse().map_err(|e| format!("sinceSeconds {v:?}: {e}"))?;
                let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs);
                q.since = Some(since);
            }
            "timestamps" => q.timestamps = flag,
            "follow" => q.follow = flag,
            "previous" => q.previous = flag,
            "tailLines" => q.tail = Some(v.parse().map_err(|e| format!("tailLines {v:?}: {e}"))?),
            "limitBytes" => {
                q.limit_bytes = Some(v.parse().map_err(|e| format!("limitBytes {v:?}: {e}"))?);
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Formats stored lines for the client: the content, with its time first
/// when asked.
fn render(lines: &str, q: &Query) -> String {
    let mut selected: Vec<String> = Vec::new();
    for line in lines.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let content = parts.next().unwrap_or_default();
        if let Some(since) = q.since {
            match ts.parse::<jiff::Timestamp>() {
                Ok(t) if t < since => continue,
                Err(_) => continue,
                Ok(_) => {}
            }
        }
        selected.push(if q.timestamps { format!("{ts} {content}\n") } else { format!("{content}\n") });
    }
    if let Some(tail) = q.tail {
        let skip = selected.len().saturating_sub(tail);
        selected.drain(..skip);
    }
    let mut out: String = selected.concat();
    if let Some(limit) = q.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let q = match parse_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
    };
    if q.previous {
        return Ok(text(StatusCode::NOT_FOUND, "previous container logs are not kept by the sluice node agent\n"));
    }
    let file = path_for(&agent, ns, pod, container);
    let Ok(content) = tokio::fs::read(&file).await else {
        return Ok(text(StatusCode::NOT_FOUND, format!("no logs for container {container} of pod {ns}/{pod}\n")));
    };
    let offset = content.len() as u64;
    let first = render(&String::from_utf8_lossy(&content), &q);
    if !q.follow {
        return Ok(text(StatusCode::OK, first));
    }
    // follow: the backlog, then whatever is appended, until the client goes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let follow_query = Query { since: None, tail: None, limit_bytes: None, ..q };
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let mut offset = offset;
        let mut pending = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(mut f) = tokio::fs::File::open(&file).await else {
                return;
            };
            if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut more = Vec::new();
            if f.read_to_end(&mut more).await.is_err() {
                return;
            }
            offset += more.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&more));
            let Some(end) = pending.rfind('\n') else {
                if tx.is_closed() {
                    return;
                }
                continue;
            };
            let complete: String = pending.drain(..=end).collect();
            let chunk = render(&complete, &follow_query);
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::new(BodyExt::boxed(body)))
}

fn path_for(agent: &Agent, ns: &str, pod: &str, container: &str) -> PathBuf {
    let clean = |s: &str| s.replace(['/', '\\'], "_").replace("..", "_");
    path(&agent.cli.state_dir, &clean(ns), &clean(pod), &clean(container))
}

/// Serves the kubelet log API over HTTPS with a self-signed certificate (the
/// API server does not verify kubelet certificates unless told to).
pub async fn serve(agent: Arc<Agent>) -> Result<()> {
    let ip = agent.cli.node_ip;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(ip)));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("log server TLS config")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let addr = std::net::SocketAddr::from((ip, agent.cli.kubelet_port));
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the kubelet port {addr}"))?;
    tracing::info!("container logs served at https://{addr}/containerLogs/");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(agent.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-12-01T10:00:00.000000000Z stdout F first\n\
                       2026-12-01T10:00:01.000000000Z stderr F second line\n\
                       2026-12-01T10:00:02.000000000Z stdout F third\n";

    #[test]
    fn since_time_and_timestamps() {
        let q = parse_query("sinceTime=2026-12-01T10%3A00%3A01Z&timestamps=true").unwrap();
        assert_eq!(
            render(LOG, &q),
            "2026-12-01T10:00:01.000000000Z second line\n2026-12-01T10:00:02.000000000Z third\n"
        );
    }

    #[test]
    fn tail_and_limit() {
        let q = parse_query("tailLines=2").unwrap();
        assert_eq!(render(LOG, &q), "second line\nthird\n");
        let q = parse_query("limitBytes=3").unwrap();
        assert_eq!(render(LOG, &q), "fir");
        assert!(parse_query("tailLines=x").is_err());
    }
}
