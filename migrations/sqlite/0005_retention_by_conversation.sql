-- Retention finds old messages through their conversations, not through an index of every
-- message's time: within a conversation, created_at never decreases with seq (sends are stamped
-- no earlier than the conversation's last message, imports renumber to keep it so), so a
-- conversation's oldest message is its first, and the messages older than the window are a
-- prefix of it. Each conversation keeps its first message's time, written when it gets its
-- first message (and by imports of older ones, and by retention); `messages_created_at`, one
-- more B-tree insert for every message written (8.7% of a SQLite import's instructions), goes.
alter table conversations add column first_message_at bigint;
update conversations set first_message_at = (select m.created_at from messages m
    where m.conversation_id = conversations.conversation_id order by m.seq limit 1)
    where last_seq > 0;
create index conversations_by_first_message on conversations (first_message_at)
    where first_message_at is not null;
drop index messages_created_at;
