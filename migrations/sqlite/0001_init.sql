-- Confab schema, SQLite. Timestamps are milliseconds since the epoch (bigint), ids text,
-- JSON documents text: the same columns as the SQLite schema, so the statements are shared.

create table settings (
    key text primary key,
    value text not null
);

-- One row per counter; `changes` hands out change-log positions. Its row lock is taken last in
-- every writing transaction, so positions are assigned in commit order (docs/architecture.md).
create table counters (
    name text primary key,
    value bigint not null
);
insert into counters (name, value) values ('changes', 0);

create table users (
    user_id text primary key,
    name text not null,
    image_url text,
    kind text not null default 'user',
    custom text not null default '{}',
    deactivated_at bigint,
    last_seen_at bigint,
    created_at bigint not null,
    updated_at bigint not null
);

create table conversations (
    conversation_id text primary key,
    kind text not null,
    name text,
    image_url text,
    created_by text,
    external_id text unique,
    -- "a b" for a direct conversation between a and b (sorted): one per pair.
    direct_key text unique,
    custom text not null default '{}',
    member_count bigint not null default 0,
    last_seq bigint not null default 0,
    last_message_id text,
    last_message_at bigint,
    -- coalesce(last_message_at, created_at): the listing order, maintained by the write path.
    activity_at bigint not null,
    created_at bigint not null,
    updated_at bigint not null
);

create table members (
    conversation_id text not null references conversations (conversation_id),
    user_id text not null references users (user_id),
    role text not null,
    last_read_seq bigint not null default 0,
    joined_at bigint not null,
    primary key (conversation_id, user_id)
);
create index members_by_user on members (user_id, conversation_id);

create table conversation_tags (
    conversation_id text not null references conversations (conversation_id),
    tag text not null,
    primary key (conversation_id, tag)
);
create index conversation_tags_by_tag on conversation_tags (tag, conversation_id);

create table messages (
    message_id text primary key,
    conversation_id text not null references conversations (conversation_id),
    seq bigint not null,
    sender_id text,
    client_id text,
    kind text not null,
    text text,
    encrypted text,
    attachments text not null default '[]',
    parent_id text,
    custom text not null default '{}',
    external_id text,
    created_at bigint not null,
    edited_at bigint,
    deleted_at bigint,
    unique (conversation_id, seq)
);
create unique index messages_client_id on messages (conversation_id, sender_id, client_id)
    where client_id is not null;
create unique index messages_external_id on messages (external_id) where external_id is not null;
create index messages_created_at on messages (created_at);

-- The change log: what sync, realtime and webhooks read. One row per change, not per member.
create table changes (
    pos integer primary key,
    conversation_id text not null,
    kind text not null,
    user_id text,
    data text not null,
    created_at bigint not null
);
create index changes_by_conversation on changes (conversation_id, pos);
