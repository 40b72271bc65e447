//! The objects of the wire contract (`shared/API.md`) and the rules every input must pass.
//!
//! Validation lives here, not in handlers or storage, so the REST edge, the socket edge and the
//! importer refuse the same things with the same `field` paths.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

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

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct User {
    /// Chosen by the app: 1-128 characters of `[A-Za-z0-9_.@:-]`.
    #[schema(
        example = "u_42",
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_.@:-]{1,128}$"
    )]
    pub id: String,
    #[schema(example = "Salt Academy")]
    pub name: String,
    #[schema(required = true)]
    pub image_url: Option<String>,
    /// A free label (`user`, `company`, `page`, `customer`, ...); default `user`.
    #[schema(example = "user")]
    pub kind: String,
    /// Free JSON object of the app's own fields.
    #[schema(value_type = Object)]
    pub custom: Value,
    /// Presence: has at least one live realtime connection.
    pub online: bool,
    #[schema(required = true)]
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

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Member {
    pub user_id: String,
    /// `owner` for the creator, `member` for everyone else.
    #[schema(value_type = crate::http::openapi::MemberRole)]
    pub role: String,
    pub last_read_seq: i64,
    pub joined_at: Timestamp,
    pub user: User,
}

/// A conversation as the caller sees it.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Conversation {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::http::openapi::ConversationType)]
    pub kind: String,
    /// For `direct`, the other member's name unless set explicitly.
    #[schema(required = true)]
    pub name: Option<String>,
    /// For `direct`, the other member's image unless set explicitly.
    #[schema(required = true)]
    pub image_url: Option<String>,
    /// Null when created with a server token and no `?as`.
    #[schema(required = true)]
    pub created_by: Option<String>,
    #[schema(required = true)]
    pub external_id: Option<String>,
    #[schema(value_type = Object)]
    pub custom: Value,
    /// The conversation's tags, the same for every member.
    pub tags: Vec<String>,
    /// Exact number of members.
    pub member_count: i64,
    /// At most 20 members, the caller first.
    pub members: Vec<Member>,
    /// `seq` of the newest message (0 when none).
    pub last_seq: i64,
    #[schema(required = true)]
    pub last_message: Option<Message>,
    /// Messages with `seq > last_read_seq`, not sent by the caller, not deleted.
    pub unread_count: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[schema(required = true)]
    pub last_message_at: Option<Timestamp>,
    /// Only with `?messages=N` on `GET /v1/conversations/{id}`: the newest N, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<Message>)]
    pub messages: Option<Vec<Message>>,
}

/// A message; a deleted one is a tombstone (`deleted_at` set, `text` and `encrypted` null,
/// `attachments` empty).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    /// Per conversation, from 1, strictly increasing, without gaps.
    pub seq: i64,
    /// Null for `system` messages.
    #[schema(required = true)]
    pub sender_id: Option<String>,
    #[schema(required = true)]
    pub client_id: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = crate::http::openapi::MessageType)]
    pub kind: String,
    #[schema(required = true)]
    pub text: Option<String>,
    /// Opaque to the server, returned byte-for-byte.
    #[schema(required = true, value_type = Option<crate::http::openapi::Encrypted>)]
    pub encrypted: Option<Value>,
    /// Stored and returned as sent.
    #[schema(value_type = Vec<crate::http::openapi::Attachment>)]
    pub attachments: Value,
    #[schema(required = true)]
    pub parent_id: Option<String>,
    #[schema(value_type = Object)]
    pub custom: Value,
    pub created_at: Timestamp,
    #[schema(required = true)]
    pub edited_at: Option<Timestamp>,
    #[schema(required = true)]
    pub deleted_at: Option<Timestamp>,
}

/// The kinds of change recorded in the change log, named as the realtime events are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = EventType)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
        Value::String(s) if s.contains('\0') => Err(Invalid::new(field, "must not contain U+0000")),
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
///
/// A message needs `text`, `encrypted` or at least one attachment.
#[derive(Debug, Clone, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendInput {
    /// Required. Makes the send idempotent per sender and conversation: a retry with the same
    /// `client_id` answers 200 with the original message.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 64, example = "tmp-7f3a")]
    pub client_id: Option<String>,
    /// At most 8,000 characters.
    #[schema(required = false, max_length = 8000, example = "hello")]
    pub text: Option<String>,
    /// End-to-end encrypted content, opaque to the server (`ciphertext` and `nonce` required).
    #[schema(required = false, value_type = Option<crate::http::openapi::Encrypted>)]
    pub encrypted: Option<Value>,
    /// At most 10; each needs `key`.
    #[schema(required = false, value_type = Option<Vec<crate::http::openapi::Attachment>>, max_items = 10)]
    pub attachments: Option<Vec<Value>>,
    #[schema(required = false, max_length = 64)]
    pub parent_id: Option<String>,
    /// A JSON object, at most 8 KiB serialized.
    #[schema(required = false, value_type = Option<Object>)]
    pub custom: Option<Value>,
    /// With a server token: the sender (same as `?as=`).
    #[schema(required = false)]
    pub user_id: Option<String>,
    /// Socket `message.send` carries the conversation in the body (ignored over REST).
    #[schema(required = false)]
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
        assert_eq!(
            s.validate().unwrap_err().field.as_deref(),
            Some("client_id")
        );
        s.client_id = Some("c1".into());
        assert_eq!(s.validate().unwrap_err().field.as_deref(), Some("text"));
        s.text = Some("hi".into());
        assert!(s.validate().is_ok());
        s.text = Some("x".repeat(8001));
        assert_eq!(s.validate().unwrap_err().field.as_deref(), Some("text"));
    }
}
