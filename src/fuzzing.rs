//! Entry points for the `cargo fuzz` targets in `fuzz/`: one function per parser of untrusted
//! input, each feeding the parser arbitrary bytes and asserting its contract (a panic is a
//! finding). They are plain functions so that a crash a fuzzer found is replayed as a unit test
//! (`tests` below) and the contracts run under `cargo test` too.
//!
//! The contracts, shared by every parser here:
//! - nothing panics;
//! - a refusal is a clean `400 validation_failed` (never a 5xx), naming a field when it can;
//! - what is accepted satisfies the rules the rest of the server relies on (in particular no
//!   U+0000 in any string that reaches the database: PostgreSQL refuses it, which would be a 500);
//! - an opaque token or cursor that decodes re-encodes to the same value.

use serde_json::Value;

use crate::auth::{Keys, Principal};
use crate::domain::{Timestamp, check_no_nul, check_tags, check_user_id};
use crate::http::error::ApiError;
use crate::http::extract::{Params, bearer_token};
use crate::import::{LineSplitter, Record, parse_record};
use crate::storage::PageBound;

/// The secret the fuzzed parsers seal and open with.
fn fuzz_keys() -> Keys {
    Keys::new("fuzzing-secret-0123456789")
}

/// Splits fuzz input into `n` parts at `0xFF` bytes (never valid UTF-8, so never inside a
/// string the parts are made of); missing parts are `None`.
fn parts(data: &[u8], n: usize) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = data
        .split(|b| *b == 0xFF)
        .take(n)
        .map(|p| Some(String::from_utf8_lossy(p).into_owned()))
        .collect();
    out.resize(n, None);
    out
}

/// A refusal must be `400 validation_failed`, its field (when named) one of `fields`.
#[track_caller]
fn assert_clean_refusal(e: &ApiError, fields: &[&str], input: &dyn std::fmt::Debug) {
    let ApiError::Validation { field, message } = e else {
        panic!("{input:?}: refused with {e:?}, not a validation error");
    };
    assert!(!message.is_empty(), "{input:?}: empty message");
    if let Some(f) = field {
        assert!(
            fields.is_empty() || fields.contains(&f.as_str()),
            "{input:?}: refusal names {f:?}, expected one of {fields:?}"
        );
    }
}

#[track_caller]
fn assert_no_nul(what: &str, s: &str) {
    assert!(!s.contains('\0'), "{what} holds U+0000: {s:?}");
}

// ---------------------------------------------------------------- conversation-list cursors

/// `GET /v1/conversations` query strings: the cursor, and every other listing parameter.
pub fn conversation_list(data: &[u8]) {
    use crate::http::conversations::{decode_cursor, encode_cursor, list_filter};

    let keys = fuzz_keys();
    let s = String::from_utf8_lossy(data);
    // The cursor alone: only a cursor this server sealed decodes (a fuzzer cannot forge the
    // tag), and whatever decodes re-encodes to the same position.
    if let Some(c) = decode_cursor(&keys, &s) {
        assert_eq!(
            decode_cursor(&keys, &encode_cursor(&keys, &c)),
            Some(c.clone()),
            "{s:?}"
        );
    }
    // Any position the server hands out (ids: at most 128 bytes, never U+0000) decodes back
    // to itself, and the same cursor with one byte changed does not decode.
    if data.len() >= 8 {
        let at = i64::from_le_bytes(data[..8].try_into().unwrap());
        let id: String = String::from_utf8_lossy(&data[8..])
            .chars()
            .scan(0, |bytes, c| {
                *bytes += c.len_utf8();
                (*bytes <= 128).then_some(c)
            })
            .collect();
        let c = (at, id);
        let expected = (!c.1.contains('\0')).then(|| c.clone());
        let sealed = encode_cursor(&keys, &c);
        assert_eq!(decode_cursor(&keys, &sealed), expected);
        let mut changed = sealed.into_bytes();
        let i = data[0] as usize % changed.len();
        changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        assert_eq!(
            decode_cursor(&keys, &changed),
            None,
            "{changed:?} was forged"
        );
    }
    // The whole query string, raw and as a cursor parameter.
    let mut queries = vec![s.to_string()];
    queries.push(serde_urlencoded::to_string([("cursor", &*s)]).unwrap());
    for q in queries {
        let params = match Params::from_query(&q) {
            Ok(p) => p,
            Err(e) => {
                assert_clean_refusal(&e, &[], &q);
                continue;
            }
        };
        match list_filter(&keys, &params) {
            Ok(f) => {
                assert!((1..=100).contains(&f.limit), "{q:?}: limit {}", f.limit);
                if let Some((_, id)) = &f.cursor {
                    assert_no_nul("cursor id", id);
                }
                assert!(
                    f.kind
                        .as_deref()
                        .is_none_or(|k| k == "direct" || k == "group"),
                    "{q:?}"
                );
                assert!(check_tags("tags", &f.tags).is_ok(), "{q:?}");
                assert!(check_tags("exclude_tags", &f.exclude_tags).is_ok(), "{q:?}");
                if let Some(q2) = &f.q {
                    assert_no_nul("q", q2);
                    assert!(!q2.is_empty() && q2.chars().count() <= 256, "{q:?}");
                }
            }
            Err(e) => assert_clean_refusal(&e, &[], &q),
        }
    }
}

// ---------------------------------------------------------------- message paging

/// `GET /v1/conversations/{id}/messages` query strings. Raw, then built from three values
/// (`limit`, `before_seq`, `after_seq`) and checked against the contract's rules.
pub fn message_paging(data: &[u8]) {
    use crate::http::messages::page_params;

    let raw = String::from_utf8_lossy(data);
    if let Ok(p) = Params::from_query(&raw) {
        match page_params(&p) {
            Ok((limit, bound)) => check_page(limit, bound, &raw),
            Err(e) => assert_clean_refusal(&e, &["limit", "before_seq", "after_seq"], &raw),
        }
    }

    let values = parts(data, 3);
    let names = ["limit", "before_seq", "after_seq"];
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .zip(&values)
        .filter_map(|(n, v)| v.as_deref().map(|v| (*n, v)))
        .collect();
    let q = serde_urlencoded::to_string(&pairs).unwrap();
    let got = Params::from_query(&q).and_then(|p| page_params(&p));
    // The contract: `limit` 1-200 (default 50), seqs integers >= 0, not both bounds; anything
    // else 400 naming the parameter. U+0000 is refused first, naming its parameter.
    let int = |v: &Option<String>, lo: i64, hi: i64| -> Result<Option<i64>, ()> {
        match v {
            None => Ok(None),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                _ => Err(()),
            },
        }
    };
    let nul = values
        .iter()
        .zip(names)
        .find(|(v, _)| v.as_deref().is_some_and(|v| v.contains('\0')));
    let expected: Result<(u32, PageBound), &str> = if let Some((_, name)) = nul {
        Err(name)
    } else {
        (|| {
            let limit = int(&values[0], 1, 200).map_err(|_| "limit")?.unwrap_or(50);
            let before = int(&values[1], 0, i64::MAX).map_err(|_| "before_seq")?;
            let after = int(&values[2], 0, i64::MAX).map_err(|_| "after_seq")?;
            let bound = match (before, after) {
                (Some(_), Some(_)) => return Err("after_seq"),
                (Some(b), None) => PageBound::Before(b),
                (None, Some(a)) => PageBound::After(a),
                (None, None) => PageBound::Newest,
            };
            Ok((limit as u32, bound))
        })()
    };
    match (got, expected) {
        (Ok((l, b)), Ok((el, eb))) => {
            assert_eq!((l, format!("{b:?}")), (el, format!("{eb:?}")), "{q:?}");
            check_page(l, b, &q);
        }
        (Err(e), Err(field)) => {
            assert_clean_refusal(&e, &[field], &q);
            assert!(
                matches!(&e, ApiError::Validation { field: Some(_), .. }),
                "{q:?}: no field"
            );
        }
        (got, expected) => panic!("{q:?}: got {got:?}, the contract says {expected:?}"),
    }
}

fn check_page(limit: u32, bound: PageBound, q: &str) {
    assert!((1..=200).contains(&limit), "{q:?}: limit {limit}");
    match bound {
        PageBound::Before(s) | PageBound::After(s) => assert!(s >= 0, "{q:?}: seq {s}"),
        PageBound::Newest => {}
    }
}

// ---------------------------------------------------------------- sync tokens

/// `GET /v1/sync?since=<token>`: tokens decode to a position >= 0 and re-encode to the same
/// value; every token the server makes decodes back.
pub fn sync_token(data: &[u8]) {
    use crate::http::sync::{TokenCheck, check_token, encode_token};

    let keys = fuzz_keys();
    let db = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let s = String::from_utf8_lossy(data);
    // Whatever is presented: one of ours re-encodes to itself; nothing panics.
    if let TokenCheck::Ours(pos) = check_token(&keys, db, &s) {
        assert!(pos >= 0, "{s:?}: position {pos}");
        assert_eq!(
            check_token(&keys, db, &encode_token(&keys, db, pos)),
            TokenCheck::Ours(pos),
            "{s:?}"
        );
    }
    // Every token the server makes reads back; another database's is foreign; a changed
    // byte is not ours.
    if data.len() >= 8 {
        let pos = i64::from_le_bytes(data[..8].try_into().unwrap());
        let other = String::from_utf8_lossy(&data[8..]).into_owned();
        let token = encode_token(&keys, db, pos);
        let expected = if pos >= 0 {
            TokenCheck::Ours(pos)
        } else {
            TokenCheck::Malformed
        };
        assert_eq!(check_token(&keys, db, &token), expected);
        if pos >= 0 && other != db && !other.is_empty() {
            let theirs = encode_token(&keys, &other, pos);
            assert_ne!(check_token(&keys, db, &theirs), TokenCheck::Ours(pos));
        }
        let mut changed = token.into_bytes();
        let i = data[0] as usize % changed.len();
        changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        assert!(
            !matches!(check_token(&keys, db, &changed), TokenCheck::Ours(_)),
            "{changed:?} was forged"
        );
    }
}

// ---------------------------------------------------------------- NDJSON import

/// One import line: a record, or a clean refusal; an accepted record satisfies what the bulk
/// writer relies on. Also: splitting the same bytes into lines gives the same lines however
/// the body is cut into chunks.
pub fn import_line(data: &[u8]) {
    match parse_record(1, data) {
        Ok(rec) => check_record(rec, data),
        Err(inv) => {
            assert!(!inv.message.is_empty(), "{data:?}");
            if serde_json::from_slice::<Value>(data).is_err() {
                assert_eq!(inv.field, None, "malformed JSON names no field");
            }
        }
    }
    import_chunks(data);
}

fn check_record(rec: Record, data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let ts = |ms: i64| {
        // An accepted time is one the API can print and read back.
        let t = Timestamp(ms);
        assert_eq!(Timestamp::parse(&t.to_rfc3339()), Some(t), "{input}");
    };
    let text = |what: &str, s: &str, max: usize| {
        assert_no_nul(what, s);
        assert!(s.chars().count() <= max, "{input}: {what} too long");
    };
    let object = |what: &str, v: &Value| {
        assert!(v.is_object(), "{input}: {what} is not an object");
        assert!(check_no_nul(what, v).is_ok(), "{input}: {what}");
    };
    match rec {
        Record::User(_, u) => {
            assert!(check_user_id("id", &u.id).is_ok(), "{input}");
            if let Some(n) = &u.name {
                assert!(!n.is_empty());
                text("name", n, 256);
            }
            if let Some(Some(i)) = &u.image_url {
                text("image_url", i, 2048);
            }
            if let Some(k) = &u.kind {
                assert!(!k.is_empty());
                text("kind", k, 64);
            }
            if let Some(c) = &u.custom {
                object("custom", c);
            }
        }
        Record::Conversation(c) => {
            assert!(!c.external_id.is_empty());
            text("external_id", &c.external_id, 256);
            assert!(c.kind == "direct" || c.kind == "group", "{input}");
            assert!((1..=1000).contains(&c.member_ids.len()), "{input}: members");
            if c.kind == "direct" {
                assert_eq!(c.member_ids.len(), 2, "{input}");
            }
            assert!(c.member_ids.windows(2).all(|w| w[0] < w[1]), "{input}");
            for m in &c.member_ids {
                assert!(check_user_id("member_ids", m).is_ok(), "{input}");
            }
            for (what, v) in [("name", &c.name), ("image_url", &c.image_url)] {
                if let Some(v) = v {
                    text(what, v, 2048);
                }
            }
            object("custom", &c.custom);
            assert!(check_tags("tags", &c.tags).is_ok(), "{input}");
            if let Some(t) = c.created_at {
                ts(t);
            }
        }
        Record::Message(m) => {
            assert!(!m.external_id.is_empty() && !m.conversation_external_id.is_empty());
            text("external_id", &m.external_id, 256);
            text("conversation_external_id", &m.conversation_external_id, 256);
            if let Some(s) = &m.sender_id {
                assert!(check_user_id("sender_id", s).is_ok(), "{input}");
            }
            assert!(m.kind == "regular" || m.kind == "system", "{input}");
            if let Some(t) = &m.text {
                text("text", t, crate::domain::MAX_TEXT_CHARS);
            }
            if let Some(e) = &m.encrypted {
                object("encrypted", e);
            }
            let attachments = m.attachments.as_array().expect("attachments is an array");
            assert!(attachments.len() <= crate::domain::MAX_ATTACHMENTS);
            assert!(
                check_no_nul("attachments", &m.attachments).is_ok(),
                "{input}"
            );
            object("custom", &m.custom);
            if m.kind == "regular" {
                assert!(m.sender_id.is_some(), "{input}");
                let content = m.text.as_deref().is_some_and(|t| !t.is_empty())
                    || m.encrypted.is_some()
                    || !attachments.is_empty();
                assert!(content, "{input}: a regular message without content");
            }
            ts(m.created_at);
        }
    }
}

/// The line splitter gives the lines `split('\n')` gives (less a last empty one), whatever the
/// chunking; the first byte of the input picks the chunk size.
fn import_chunks(data: &[u8]) {
    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(k % 16) + 1;
    let mut s = LineSplitter::default();
    let mut got = Vec::new();
    for c in body.chunks(chunk) {
        s.push(c);
        while let Some(l) = s.next_line(false) {
            got.push(l.expect("short lines are never refused"));
        }
    }
    while let Some(l) = s.next_line(true) {
        got.push(l.expect("short lines are never refused"));
    }
    let mut expected: Vec<Vec<u8>> = body.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if expected.last().is_some_and(Vec::is_empty) {
        expected.pop();
    }
    assert_eq!(got, expected, "chunk size {chunk}");
}

// ---------------------------------------------------------------- Socket.IO client events

/// A client event's payload: the first byte picks the event (`message.send`, `read`,
/// `typing`), the rest is its JSON payload. Accepted payloads carry what the handlers rely on;
/// refusals are `validation_failed`, as the acknowledgement reports them.
pub fn socket_event(data: &[u8]) {
    use crate::realtime::{read_payload, send_payload, typing_payload};

    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let value: Result<Value, serde_json::Error> = serde_json::from_slice(body);
    let input = String::from_utf8_lossy(body);
    match k % 3 {
        0 => match send_payload(value) {
            Ok((conversation, msg)) => {
                assert_eq!(Some(&conversation), msg.conversation_id.as_ref());
                assert_no_nul("conversation_id", &conversation);
                assert!(msg.user_id.is_none(), "{input}");
                match msg.validate() {
                    Ok(()) => {
                        let c = msg.client_id.as_deref().expect("client_id");
                        assert!((1..=64).contains(&c.chars().count()), "{input}");
                        assert_no_nul("client_id", c);
                        if let Some(t) = &msg.text {
                            assert_no_nul("text", t);
                        }
                        if let Some(p) = &msg.parent_id {
                            assert_no_nul("parent_id", p);
                        }
                        for v in [&msg.encrypted, &msg.custom].into_iter().flatten() {
                            assert!(check_no_nul("payload", v).is_ok(), "{input}");
                        }
                    }
                    Err(inv) => assert!(!inv.message.is_empty()),
                }
            }
            Err(e) => assert_clean_refusal(&e, &[], &input),
        },
        1 => match read_payload(value) {
            Ok((conversation, seq)) => {
                assert_no_nul("conversation_id", &conversation);
                assert!(seq.is_none_or(|s| s >= 0), "{input}");
            }
            Err(e) => assert_clean_refusal(&e, &[], &input),
        },
        _ => match typing_payload(value) {
            Ok((conversation, _)) => assert_no_nul("conversation_id", &conversation),
            Err(e) => assert_clean_refusal(&e, &[], &input),
        },
    }
}

// ---------------------------------------------------------------- Authorization header

/// The fixed secret tokens are checked against here.
const SECRET: &str = "fuzzing-secret-0123456789";

/// `Authorization` headers: arbitrary bytes never authenticate (nobody can sign without the
/// secret), and a token the server signed authenticates as its subject when sent as
/// `Bearer <token>`, and not once any byte of its header or claims changes.
pub fn authorization(data: &[u8]) {
    use std::sync::LazyLock;
    static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys::new(SECRET));

    if let Ok(h) = axum::http::HeaderValue::from_bytes(data)
        && let Some(t) = bearer_token(Some(&h))
    {
        assert_eq!(t, t.trim());
        assert_eq!(KEYS.verify(t), None, "forged: {data:?}");
    }

    let Some((&k, sub)) = data.split_first() else {
        return;
    };
    let sub = String::from_utf8_lossy(sub).into_owned();
    let ttl = std::time::Duration::from_secs(60 + u64::from(k) * 3600);
    let (token, principal) = if k == 0 {
        (KEYS.server_token(ttl), Principal::Server)
    } else {
        (KEYS.user_token(&sub, ttl), Principal::User(sub.clone()))
    };
    if let Ok(h) = axum::http::HeaderValue::from_str(&format!("Bearer {token}")) {
        assert_eq!(bearer_token(Some(&h)), Some(token.as_str()));
    }
    assert_eq!(KEYS.verify(&token), Some(principal), "{token}");
    assert_eq!(Keys::new("another-secret-0123456789").verify(&token), None);
    // A changed character of the header or claims (not the last of its segment, whose low bits
    // base64 may ignore) breaks the signature.
    let sig_at = token.rfind('.').unwrap();
    let at = usize::from(k) * 7 % sig_at;
    let b = token.as_bytes()[at];
    let next_is_dot = token.as_bytes().get(at + 1) == Some(&b'.');
    if b != b'.' && !next_is_dot {
        let mut bad = token.clone().into_bytes();
        bad[at] = if b == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(KEYS.verify(&bad), None, "tampered at {at}: {bad}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `conversation_list` target in CI: a cursor for an id of 1,500 bytes is
    /// longer than any value `unseal` reads; ids are at most 128 bytes, which the contract now
    /// says.
    #[test]
    fn long_cursor_ids_are_outside_the_contract() {
        conversation_list(&[&[7u8; 8][..], "\u{fffd}".repeat(500).as_bytes()].concat());
        let keys = fuzz_keys();
        let c = (5, "x".repeat(128));
        let sealed = crate::http::conversations::encode_cursor(&keys, &c);
        assert_eq!(
            crate::http::conversations::decode_cursor(&keys, &sealed),
            Some(c)
        );
    }

    /// Every target on a few inputs each: the contracts hold on the ordinary cases.
    #[test]
    fn contracts_hold_on_ordinary_inputs() {
        let cursor = crate::http::conversations::encode_cursor(
            &fuzz_keys(),
            &(1_795_000_000_123, "c1".into()),
        );
        conversation_list(cursor.as_bytes());
        conversation_list(format!("limit=5&cursor={cursor}&tags=a,b&q=x").as_bytes());
        conversation_list(b"limit=0&type=nope");
        message_paging(b"50\xff3");
        message_paging(b"limit=5&before_seq=3");
        message_paging(b"x\xff-1\xff2");
        sync_token(crate::http::sync::encode_token(&fuzz_keys(), "db", 7).as_bytes());
        sync_token(b"\x07\0\0\0\0\0\0\0db");
        import_line(br#"{"record":"user","id":"u1","name":"A"}"#);
        import_line(br#"{"record":"conversation","external_id":"c","type":"direct","member_ids":["a","b"]}"#);
        import_line(br#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z"}"#);
        import_line(b"\x03a\nb\n\nc");
        let event = |k: u8, body: &str| socket_event(&[&[k][..], body.as_bytes()].concat());
        event(0, r#"{"conversation_id":"c","client_id":"x","text":"hi"}"#);
        event(1, r#"{"conversation_id":"c","seq":3}"#);
        event(2, r#"{"conversation_id":"c","typing":true}"#);
        socket_event(b"\x01not json");
        authorization(b"Bearer abc.def.ghi");
        authorization(b"\x05u_42");
        authorization(b"\x00");
    }
}
