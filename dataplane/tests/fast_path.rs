//! The HTTP/1.1 fast path on real sockets: keep-alive, pipelining, every response framing,
//! pooled upstream connections, hand-over to Pingora mid-connection, upstream failures.
//! (CI also runs these with `SLUICE_TEST_HTTP1_FAST_PATH=false`: Pingora's path must give
//! the same answers.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{DataPlane, catch_all, free_port, read_chunks};

/// A backend answering each request head with `answer(head)`: the bytes to send and
/// whether to close the connection afterwards. Request heads (and bodies, by
/// Content-Length) are logged.
struct Scripted {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

type Answer = fn(&str) -> (Vec<u8>, bool);

impl Scripted {
    fn start(answer: Answer) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, answer, &seen));
            }
        });
        Scripted { port, log }
    }

    fn seen(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, answer: Answer, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0usize);
        let body = if head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked\r\n") {
            // Logged decoded, behind a marker.
            let mut body = b"[chunked]".to_vec();
            body.extend(read_chunks(&mut reader));
            body
        } else {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        log.lock().unwrap().push(format!("{head}{}", String::from_utf8_lossy(&body)));
        let (bytes, close) = answer(&head);
        if writer.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// Answers each request with its path as the body, keeping the connection.
fn echo_path(head: &str) -> (Vec<u8>, bool) {
    let body = target(head);
    (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(), false)
}

/// A backend serving each connection with `serve`, on a thread of its own; its port.
fn raw_backend(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

/// The request path of a head.
fn target(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or_default()
}

fn framings(head: &str) -> (Vec<u8>, bool) {
    let bytes: &[u8] = match target(head) {
        "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-kind: length\r\n\r\nlength",
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nchu\r\n4;x=y\r\nnked\r\n0\r\nx-t: 1\r\n\r\n",
        "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        "/interim" => b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\ncreated",
        "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
        "/close" => b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        "/big" => {
            let body = "x".repeat(200_000);
            return (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(), false);
        }
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    };
    let close = target(head) == "/close";
    (bytes.to_vec(), close)
}

/// One response read off a keep-alive connection, by its framing.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn read_reply(reader: &mut BufReader<TcpStream>, head_request: bool) -> Reply {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "connection closed after {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let field =
        |name: &str| lower.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()));
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if field("transfer-encoding").is_some() {
        body = read_chunks(reader);
    } else if let Some(length) = field("content-length") {
        body = vec![0u8; length.parse().unwrap()];
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Reply { status, head, body }
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
}

#[test]
fn keeps_connections_alive_across_every_response_framing() {
    let backend = Scripted::start(framings);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    for (path, status, body) in [
        ("/length", 200, &b"length"[..]),
        ("/chunked", 200, b"chunked"),
        ("/interim", 201, b"created"),
        ("/empty", 204, b""),
        ("/length", 200, b"length"),
    ] {
        stream.write_all(get(path).as_bytes()).unwrap();
        let mut reply = read_reply(&mut reader, false);
        if reply.status == 103 {
            reply = read_reply(&mut reader, false);
        }
        assert_eq!((reply.status, reply.body.as_slice()), (status, body), "{path}: {}", reply.head);
        let head = reply.head.to_ascii_lowercase();
        assert!(head.contains("connection: keep-alive\r\n"), "{path}: {head}");
        assert!(head.contains("\r\ndate: "), "{path}: {head}");
    }
    stream.write_all(b"HEAD /head HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let reply = read_reply(&mut reader, true);
    assert_eq!(reply.status, 200);
    assert!(reply.head.to_ascii_lowercase().contains("content-length: 100"), "{}", reply.head);
    stream.write_all(get("/big").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader, false).body.len(), 200_000);
    // A response delimited by the backend closing reaches the client chunked, and the
    // client's connection stays open.
    stream.write_all(get("/close").as_bytes()).unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.body, b"until close");
    assert!(reply.head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{}", reply.head);
    stream.write_all(get("/length").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader, false).body, b"length");
}

#[test]
fn answers_pipelined_requests_in_order() {
    if std::env::var("SLUICE_TEST_HTTP1_FAST_PATH").is_ok_and(|v| v == "false") {
        // Skipped with the fast path off: Pingora's HTTP/1 server closes a connection
        // whose request has further requests pipelined behind it, without answering.
        return;
    }
    let backend = Scripted::start(echo_path);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    stream.write_all(format!("{}{}{}", get("/one"), get("/two"), get("/three")).as_bytes()).unwrap();
    for path in ["/one", "/two", "/three"] {
        assert_eq!(read_reply(&mut reader, false).body, path.as_bytes());
    }
    // `Connection: close` from the client: answered, then closed.
    stream.write_all(b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.body, b"/last");
    assert!(reply.head.to_ascii_lowercase().contains("connection: close"), "{}", reply.head);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "the connection closes");
}

#[test]
fn retries_pooled_connections_the_backend_closed() {
    // The backend closes every connection after one response without saying so, as a
    // backend with a short idle timeout does: the proxy's pooled connection is dead.
    let backend = Scripted::start(|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), true));
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    for i in 0..5 {
        let (mut stream, mut reader) = connect(port);
        stream.write_all(get(&format!("/{i}")).as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader, false).status, 200, "request {i}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A request that must not be sent twice is not sent on a connection known closed.
    for i in 0..3 {
        let (mut stream, mut reader) = connect(port);
        stream.write_all(format!("POST /p{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader, false).status, 200, "POST {i}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backend.seen().len(), 8, "each request reached the backend once");
}

#[test]
fn passes_request_bodies_mid_connection() {
    let backend = Scripted::start(framings);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    stream.write_all(get("/first").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader, false).status, 200);
    stream.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello").unwrap();
    assert_eq!(read_reply(&mut reader, false).status, 200);
    stream.write_all(get("/after").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader, false).body, b"ok");
    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].starts_with("POST /upload HTTP/1.1\r\n") && seen[1].ends_with("\r\n\r\nhello"), "{seen:?}");
    assert!(seen[2].starts_with("GET /after "), "{seen:?}");
}

#[test]
fn transfer_encoding_wins_over_content_length_from_backends() {
    let backend = Scripted::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            false,
        )
    });
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    for _ in 0..2 {
        stream.write_all(get("/").as_bytes()).unwrap();
        let reply = read_reply(&mut reader, false);
        assert_eq!(reply.body, b"abc");
        assert!(!reply.head.to_ascii_lowercase().contains("content-length"), "{}", reply.head);
    }
}

#[test]
fn answers_upstream_failures_with_gateway_errors() {
    let port = free_port();
    // Nothing listens on the backend port: 503.
    let _plane = DataPlane::start(&catch_all(port, free_port()));
    let (mut stream, mut reader) = connect(port);
    stream.write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader, false).status, 503);

    for (answer, what) in [
        ((|_| (b"NOT HTTP\r\n\r\n".to_vec(), true)) as Answer, "garbage"),
        (|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(), true), "two lengths"),
        (|_| (Vec::new(), true), "closed without answering"),
    ] {
        let backend = Scripted::start(answer);
        let port = free_port();
        let _plane = DataPlane::start(&catch_all(port, backend.port));
        let (mut stream, mut reader) = connect(port);
        stream.write_all(get("/").as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader, false).status, 502, "{what}");
    }
}

#[test]
fn reads_large_heads_arriving_in_pieces() {
    let backend = Scripted::start(framings);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    let big = "v".repeat(20_000);
    let request = format!("GET /length HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    for piece in request.as_bytes().chunks(7_000) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(read_reply(&mut reader, false).body, b"length");
    assert!(backend.seen()[0].contains(&format!("x-big: {big}\r\n")), "the whole field reached the backend");
}

#[test]
fn passes_request_bodies_as_they_arrive_in_either_framing() {
    let backend = Scripted::start(echo_path);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    // A body by length arriving in pieces, well after its head.
    stream.write_all(b"POST /pieces HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n").unwrap();
    for piece in ["hello", " wor", "ld!"] {
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(piece.as_bytes()).unwrap();
    }
    assert_eq!(read_reply(&mut reader, false).body, b"/pieces");
    // A chunked body with an extension and a trailer, then a GET: in the same write on
    // the fast path (the body ends where its last chunk and trailers end); Pingora's
    // HTTP/1 server closes a connection with a request pipelined behind a body.
    let fast_path = !std::env::var("SLUICE_TEST_HTTP1_FAST_PATH").is_ok_and(|v| v == "false");
    let chunked = "PUT /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n3\r\n!!!\r\n0\r\nx-t: 1\r\n\r\n";
    if fast_path {
        stream.write_all(format!("{chunked}{}", get("/after")).as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader, false).body, b"/chunked");
    } else {
        stream.write_all(chunked.as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader, false).body, b"/chunked");
        stream.write_all(get("/after").as_bytes()).unwrap();
    }
    assert_eq!(read_reply(&mut reader, false).body, b"/after");
    // A body larger than any buffer.
    let big = "b".repeat(300_000);
    stream
        .write_all(format!("POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{big}", big.len()).as_bytes())
        .unwrap();
    assert_eq!(read_reply(&mut reader, false).body, b"/big");
    let seen = backend.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with("POST /pieces ") && seen[0].ends_with("\r\n\r\nhello world!"), "{seen:?}");
    assert!(seen[1].starts_with("PUT /chunked ") && seen[1].ends_with("\r\n\r\n[chunked]hello!!!"), "{seen:?}");
    assert!(seen[2].starts_with("GET /after "), "{seen:?}");
    assert!(seen[3].starts_with("POST /big ") && seen[3].ends_with(&big), "the whole big body");
}

#[test]
fn a_malformed_chunked_request_body_is_refused_and_the_connection_closed() {
    let backend = Scripted::start(framings);
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let (mut stream, mut reader) = connect(port);
    // Nothing after the bad size line: bytes left unread when the proxy closes would make
    // the kernel reset the connection, maybe before the answer is read.
    stream.write_all(b"POST /bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").unwrap();
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.status, 400, "{}", reply.head);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the answer, then closed: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_response_reaches_the_client_as_the_backend_sends_it() {
    // The backend sends the head and a first chunk, then the rest a second later.
    let backend_port = raw_backend(|mut stream| {
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n");
        std::thread::sleep(Duration::from_millis(1500));
        let _ = stream.write_all(b"5\r\nlast\n\r\n0\r\n\r\n");
    });
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend_port));
    let (mut stream, mut reader) = connect(port);
    let started = std::time::Instant::now();
    stream.write_all(get("/events").as_bytes()).unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
    }
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let took = started.elapsed();
    assert_eq!(first, "first\n");
    assert!(took < Duration::from_millis(1000), "the first chunk waited for the rest: {took:?}");
}

#[test]
fn a_backend_answering_before_the_whole_body_has_its_answer_passed_on() {
    // The backend reads only the head, refuses the upload and closes.
    let backend_port = raw_backend(|mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = stream.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend_port));
    let (mut stream, mut reader) = connect(port);
    const SIZE: usize = 8 << 20;
    stream.write_all(format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {SIZE}\r\n\r\n").as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let block = vec![b'u'; 64 << 10];
        for _ in 0..SIZE / block.len() {
            if writer.write_all(&block).is_err() {
                return;
            }
        }
    });
    let reply = read_reply(&mut reader, false);
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert!(reply.head.to_ascii_lowercase().contains("connection: close"), "{}", reply.head);
    drop(reader);
    drop(stream);
    upload.join().unwrap();
}
