-- Ids and the other keys compare byte by byte (collation "C"), as SQLite's compare them. Under
-- any other collation every comparison in an index descent goes through the C library's or
-- ICU's collation code: inserting 1,000,000 rows into a table keyed and indexed as messages are
-- (three text indexes) took 11-25% less time with "C" than with the database's C.UTF-8, and
-- with ICU's en-US 21-23% more than with C.UTF-8 (BENCHMARKS.md, 2026-11-24 session 15). Ids are
-- opaque, so no order a user sees changes meaning; keyset cursors and the lock order of
-- conversations (sorted in Rust, bytewise) now agree with the database's order. Names, texts
-- and the other free text keep the database's collation, and so do the few internal keys
-- (settings, counters, statuses). A column's collation changes without rewriting its table;
-- its indexes are rebuilt and the foreign keys checked again, all under the tables' locks
-- (3.3 s for 1,000,000 messages here).
alter table users alter column user_id type text collate "C";
alter table conversations
    alter column conversation_id type text collate "C",
    alter column external_id type text collate "C",
    alter column direct_key type text collate "C",
    alter column created_by type text collate "C",
    alter column last_message_id type text collate "C";
alter table members
    alter column conversation_id type text collate "C",
    alter column user_id type text collate "C";
alter table conversation_tags
    alter column conversation_id type text collate "C",
    alter column tag type text collate "C";
alter table messages
    alter column message_id type text collate "C",
    alter column conversation_id type text collate "C",
    alter column sender_id type text collate "C",
    alter column client_id type text collate "C",
    alter column external_id type text collate "C",
    alter column parent_id type text collate "C";
alter table changes
    alter column conversation_id type text collate "C",
    alter column user_id type text collate "C";
alter table webhook_deliveries
    alter column delivery_id type text collate "C",
    alter column conversation_id type text collate "C";
alter table jobs alter column job_id type text collate "C";
