//! The objects of the wire contract (`shared/API.md`) and the rules every input must pass.
//!
//! Validation lives here, not in handlers or storage, so the REST edge, the socket edge and the
//! importer refuse the same things with the same `field` paths.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Milliseconds since the Unix epoch; serialized as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }

    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub fn parse(s: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| Timestamp(d.timestamp_millis()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub image_url: Option<String>,
    pub kind: String,
    pub custom: Value,
    pub online: bool,
    pub last_seen_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A user as the app sends it to `PUT /v1/users`; absent fields keep their stored value.
#[derive(Debug, Clone, Default)]
pub struct UserInput {
    pub id: String,
    pub name: Option<String>,
    /// `Some(None)` clears the image; `None` leaves it.
    pub image_url: Option<Option<String>>,
    pub kind: Option<String>,
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    pub user_id: String,
    pub role: String,
    pub last_read_seq: i64,
    pub joined_at: Timestamp,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Conversation {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub image_url: Option<String>,
    pub created_by: Option<String>,
    pub external_id: Option<String>,
    pub custom: Value,
    pub tags: Vec<String>,
    pub member_count: i64,
    pub members: Vec<Member>,
    pub last_seq: i64,
    pub last_message: Option<Message>,
    pub unread_count: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_message_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub sender_id: Option<String>,
    pub client_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub encrypted: Option<Value>,
    pub attachments: Value,
    pub parent_id: Option<String>,
    pub custom: Value,
    pub created_at: Timestamp,
    pub edited_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
}

/// The kinds of change recorded in the change log, named as the realtime events are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "message.new")]
    MessageNew,
    #[serde(rename = "message.updated")]
    MessageUpdated,
    #[serde(rename = "message.deleted")]
    MessageDeleted,
    #[serde(rename = "conversation.created")]
    ConversationCreated,
    #[serde(rename = "conversation.updated")]
    ConversationUpdated,
    #[serde(rename = "member.joined")]
    MemberJoined,
    #[serde(rename = "member.left")]
    MemberLeft,
    #[serde(rename = "read")]
    Read,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::MessageNew => "message.new",
            ChangeKind::MessageUpdated => "message.updated",
            ChangeKind::MessageDeleted => "message.deleted",
            ChangeKind::ConversationCreated => "conversation.created",
            ChangeKind::ConversationUpdated => "conversation.updated",
            ChangeKind::MemberJoined => "member.joined",
            ChangeKind::MemberLeft => "member.left",
            ChangeKind::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

/// One committed change, as sync, realtime and webhooks consume it. `pos` orders all changes
/// of the database; `data` is the event payload as it was when the change happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub pos: i64,
    pub conversation_id: String,
    pub kind: ChangeKind,
    /// The user a membership or read change is about (so a newly added user can see it).
    pub user_id: Option<String>,
    pub data: Value,
    pub created_at: Timestamp,
}

// ---------------------------------------------------------------- validation

/// A refused input: which field (as a path) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: Option<String>,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

pub type Check<T = ()> = Result<T, Invalid>;

pub const MAX_TEXT_CHARS: usize = 8_000;
pub const MAX_CUSTOM_BYTES: usize = 8 * 1024;
pub const MAX_ATTACHMENTS: usize = 10;
pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_TAGS: usize = 50;
pub const MAX_MEMBERS_PER_CALL: usize = 1000;

pub fn check_user_id(field: &str, id: &str) -> Check {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be 1-128 characters of A-Z a-z 0-9 _ . @ : -",
        ))
    }
}

pub fn check_string(field: &str, s: &str, max_chars: usize) -> Check {
    if s.contains('\0') {
        return Err(Invalid::new(field, "must not contain U+0000"));
    }
    if s.chars().count() > max_chars {
        return Err(Invalid::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// Rejects U+0000 anywhere inside a JSON value (keys included), naming the path.
pub fn check_no_nul(field: &str, v: &Value) -> Check {
    match v {
        Value::String(s) if s.contains('\0') => {
            Err(Invalid::new(field, "must not contain U+0000"))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_no_nul(&format!("{field}[{i}]"), x)),
        Value::Object(map) => map.iter().try_for_each(|(k, x)| {
            if k.contains('\0') {
                return Err(Invalid::new(field, "must not contain U+0000"));
            }
            check_no_nul(&format!("{field}.{k}"), x)
        }),
        _ => Ok(()),
    }
}

pub fn check_custom(field: &str, v: &Value) -> Check {
    if !v.is_object() {
        return Err(Invalid::new(field, "must be an object"));
    }
    check_no_nul(field, v)?;
    if v.to_string().len() > MAX_CUSTOM_BYTES {
        return Err(Invalid::new(field, "must be at most 8 KiB serialized"));
    }
    Ok(())
}

pub fn check_tags(field: &str, tags: &[String]) -> Check {
    if tags.len() > MAX_TAGS {
        return Err(Invalid::new(field, format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in tags.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if t.is_empty() {
            return Err(Invalid::new(f, "must not be empty"));
        }
        check_string(&f, t, 64)?;
        if t.contains(',') {
            return Err(Invalid::new(f, "must not contain a comma"));
        }
    }
    Ok(())
}

/// The body of a send (REST or socket), validated.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SendInput {
    pub client_id: Option<String>,
    pub text: Option<String>,
    pub encrypted: Option<Value>,
    pub attachments: Option<Vec<Value>>,
    pub parent_id: Option<String>,
    pub custom: Option<Value>,
    /// With a server token: the sender (same as `?as=`).
    pub user_id: Option<String>,
    /// Socket `message.send` carries the conversation in the body.
    pub conversation_id: Option<String>,
}

impl SendInput {
    pub fn validate(&self) -> Check {
        match &self.client_id {
            None => return Err(Invalid::new("client_id", "is required")),
            Some(c) if c.is_empty() || c.chars().count() > 64 => {
                return Err(Invalid::new("client_id", "must be 1-64 characters"));
            }
            Some(c) => check_string("client_id", c, 64)?,
        }
        if let Some(t) = &self.text {
            check_string("text", t, MAX_TEXT_CHARS)?;
        }
        if let Some(e) = &self.encrypted {
            let Some(obj) = e.as_object() else {
                return Err(Invalid::new("encrypted", "must be an object"));
            };
            for key in ["ciphertext", "nonce"] {
                if !obj.get(key).is_some_and(Value::is_string) {
                    return Err(Invalid::new(
                        format!("encrypted.{key}"),
                        "is required and must be a string",
                    ));
                }
            }
            check_no_nul("encrypted", e)?;
            if e.to_string().len() > 64 * 1024 {
                return Err(Invalid::new("encrypted", "must be at most 64 KiB"));
            }
        }
        let attachments = self.attachments.as_deref().unwrap_or(&[]);
        if attachments.len() > MAX_ATTACHMENTS {
            return Err(Invalid::new(
                "attachments",
                format!("at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        for (i, a) in attachments.iter().enumerate() {
            let f = format!("attachments[{i}]");
            let Some(obj) = a.as_object() else {
                return Err(Invalid::new(f, "must be an object"));
            };
            if !obj.get("key").is_some_and(Value::is_string) {
                return Err(Invalid::new(
                    format!("{f}.key"),
                    "is required and must be a string",
                ));
            }
            check_no_nul(&f, a)?;
        }
        if let Some(c) = &self.custom {
            check_custom("custom", c)?;
        }
        if let Some(p) = &self.parent_id {
            check_string("parent_id", p, 64)?;
        }
        let has_text = self.text.as_deref().is_some_and(|t| !t.is_empty());
        if !has_text && self.encrypted.is_none() && attachments.is_empty() {
            return Err(Invalid::new(
                "text",
                "a message needs text, encrypted or at least one attachment",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_with_millis() {
        let t = Timestamp(1_795_000_000_123);
        let s = t.to_rfc3339();
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(Timestamp::parse(&s), Some(t));
    }

    #[test]
    fn user_ids() {
        assert!(check_user_id("id", "u_42.a@b:c-d").is_ok());
        assert!(check_user_id("id", "").is_err());
        assert!(check_user_id("id", "has space").is_err());
        assert!(check_user_id("id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn nul_is_found_deep() {
        let v = serde_json::json!({"a": [1, {"b": "x\u{0}"}]});
        let e = check_no_nul("custom", &v).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("custom.a[1].b"));
    }

    #[test]
    fn send_needs_content_and_client_id() {
        let mut s = SendInput::default();
        assert_eq!(s.validate().unwrap_err().field.as_deref(), Some("client_id"));
        s.client_id = Some("c1".into());
        assert_eq!(s.validate().unwrap_err().field.as_deref(), Some("text"));
        s.text = Some("hi".into());
        assert!(s.validate().is_ok());
        s.text = Some("x".repeat(8001));
        assert_eq!(s.validate().unwrap_err().field.as_deref(), Some("text"));
    }
}
