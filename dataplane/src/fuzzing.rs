//! The checks the fuzz targets (`fuzz/`) run on arbitrary bytes, and that
//! `tests/fuzz_corpus.rs` replays on every committed corpus file. Each one panics when an
//! invariant does not hold; none of them is used by the proxy.
//!
//! ```text
//!  bytes ──► path_normalize   normalize: starts with `/`, idempotent, no `.`/`..`/`//` or
//!                             unreserved escape left
//!        ──► http1_head       httparse + the fast path's head checks (a complete head is seen,
//!                             Content-Length lists agree)
//!        ──► chunked          ChunkedScanner: same end fed whole or in pieces
//!        ──► snapshot         prost decode → problems → compile (refused only when structurally
//!                             invalid; a valid one drops at most unloadable certificates)
//! ```

use prost::Message;
use sluice_snapshot::Snapshot;

use crate::fast::{ChunkedScanner, RequestBody, RequestHead, head_end_after, parse_length};
use crate::metrics::Metrics;
use crate::proxy::MAX_REQUEST_HEADERS;

/// `path::normalize` on any UTF-8 input.
pub fn path_normalize(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let normal = crate::path::normalize(path);
    assert!(normal.starts_with('/'), "{path:?} → {normal:?}: not absolute");
    // Idempotent: what is routed and forwarded normalizes to itself (a backend that
    // normalizes again sees the same path). Corpus: non-ascii, double-escape, stray-percent.
    assert_eq!(crate::path::normalize(&normal), normal, "{path:?}: normalize is not idempotent");
    // No escape of an unreserved character is left (`%2e` would be `.` to a backend).
    assert!(!has_unreserved_escape(&normal), "{path:?} → {normal:?}: an escape of an unreserved character is left");
    for segment in normal.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "{path:?} → {normal:?}: dot segment left");
    }
    assert!(!normal.contains("//"), "{path:?} → {normal:?}: empty segment left");
}

/// Whether `path` holds `%XX` escaping an unreserved character.
fn has_unreserved_escape(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && bytes
                .get(i + 1..i + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .is_some_and(|v| v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
    })
}

/// The fast path's request-head parsing: httparse as `Connection::plan` calls it, the
/// end-of-head scan that decides when to parse, and the head checks.
pub fn http1_head(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = request.parse(data) else { return };
    let head = data.get(..len).unwrap_or_default();
    // The fast path parses only once it has seen an empty line: a head httparse takes
    // as complete must have one, wherever the reads split it.
    assert!(head_end_after(head, 0), "complete head without an end: {:?}", String::from_utf8_lossy(head));
    for field in request.headers.iter() {
        // Content-Length as the fast path reads it: digits, or a list of equal ones.
        if let Some(length) = parse_length(field.value) {
            for part in field.value.split(|b| *b == b',') {
                let number = std::str::from_utf8(part.trim_ascii()).ok().and_then(|p| p.parse::<u64>().ok());
                assert_eq!(number, Some(length), "{:?}", String::from_utf8_lossy(field.value));
            }
        }
    }
    let (Some(method), Some(target)) = (request.method, request.path) else { return };
    if let Some(head) = RequestHead::read(method, target, request.headers) {
        assert!(target.starts_with('/'), "{target:?} taken by the fast path");
        assert_ne!(method, "CONNECT");
        // One framing for a body the fast path passes on, never both (smuggling).
        let count = |name: &str| request.headers.iter().filter(|f| f.name.eq_ignore_ascii_case(name)).count();
        let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
        assert!(lengths == 0 || codings == 0, "both framings taken");
        match head.body() {
            RequestBody::Chunked => assert_eq!(codings, 1),
            RequestBody::Length(n) => assert!(n > 0 && lengths > 0 && codings == 0),
            RequestBody::None => assert_eq!(codings, 0),
        }
    }
}

/// The chunked-body scanner: the end it finds does not depend on how reads split the
/// body, and lies within the bytes fed.
pub fn chunked(data: &[u8]) {
    let (split, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 16) + 1, rest),
        None => return,
    };
    let whole = ChunkedScanner::default().feed(body);
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
    }
    let mut scanner = ChunkedScanner::default();
    let mut pieces = Ok(None);
    for (index, piece) in body.chunks(split).enumerate() {
        match scanner.feed(piece) {
            Ok(Some(n)) => {
                assert!(n <= piece.len());
                pieces = Ok(Some(index * split + n));
                break;
            }
            Ok(None) => {}
            Err(()) => {
                pieces = Err(());
                break;
            }
        }
    }
    assert_eq!(whole, pieces, "the end differs fed whole and in pieces of {split}");
}

/// A snapshot from the wire: it compiles unless it is structurally invalid; when it
/// validates, only pieces the validator cannot judge (certificates rustls cannot load, and
/// the listeners that need them) may be dropped.
pub fn snapshot(data: &[u8]) {
    let Ok(snapshot) = Snapshot::decode(data) else { return };
    let structural = sluice_snapshot::problems(&snapshot).iter().any(|p| p.piece == sluice_snapshot::Piece::Snapshot);
    match crate::tables::compile(&snapshot, &Metrics::default()) {
        Ok(compiled) => {
            assert!(!structural, "a structurally invalid snapshot compiled\n{snapshot:?}");
            if sluice_snapshot::validate(&snapshot).is_ok() {
                let certificates: Vec<&str> = snapshot.certificates.iter().map(|c| c.name.as_str()).collect();
                for piece in &compiled.dropped {
                    let certificate =
                        certificates.contains(&piece.name.as_str()) || piece.problem.starts_with("certificate ");
                    assert!(certificate, "a valid snapshot dropped {piece:?}\n{snapshot:?}");
                }
            }
        }
        Err(error) => assert!(structural, "only a structurally invalid snapshot is refused: {error}\n{snapshot:?}"),
    }
}

/// Panics unless the data plane compiles `snapshot` whole, dropping nothing (what the
/// translator emits).
pub fn assert_compiles(snapshot: &Snapshot) {
    match crate::tables::compile(snapshot, &Metrics::default()) {
        Ok(compiled) => {
            assert!(compiled.dropped.is_empty(), "the data plane dropped {:?}\n{snapshot:?}", compiled.dropped)
        }
        Err(error) => panic!("a translated snapshot does not compile: {error}\n{snapshot:?}"),
    }
}
