#!/usr/bin/env bash
# Shows the PostgreSQL plans of the sync queries for a user in 10,000 conversations, with
# 200,000 older changes and 5 new ones after the token (docs/sync.md, "Cost").
# Needs a built `confab` (cargo build) and PostgreSQL on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
db=confab_sync_plans
psql -h 127.0.0.1 -U postgres -qc "drop database if exists $db" -c "create database $db"
CONFAB_DATABASE_URL="postgres://postgres@127.0.0.1/$db" ./target/debug/confab migrate
psql -h 127.0.0.1 -U postgres -d "$db" -q <<'SQL'
insert into users (user_id, name, created_at, updated_at) select 'u' || g, 'U' || g, 0, 0 from generate_series(0, 10000) g;
insert into conversations (conversation_id, kind, member_count, activity_at, created_at, updated_at)
  select 'c' || g, 'direct', 2, 0, 0, 0 from generate_series(1, 10000) g;
insert into members (conversation_id, user_id, role, joined_at) select 'c' || g, 'u0', 'member', 0 from generate_series(1, 10000) g;
insert into members (conversation_id, user_id, role, joined_at) select 'c' || g, 'u' || g, 'member', 0 from generate_series(1, 10000) g;
insert into changes (pos, conversation_id, kind, data, created_at)
  select g, 'c' || (1 + g % 10000), 'message.new', '{}', 0 from generate_series(1, 200000) g;
insert into changes (pos, conversation_id, kind, data, created_at)
  select 200000 + g, 'c' || g, 'message.new', '{}', 0 from generate_series(1, 5) g;
update counters set value = 200005 where name = 'changes';
analyze;
SQL
q="select ch.pos, ch.conversation_id, ch.kind, ch.user_id, ch.data, ch.created_at from changes ch
   where ch.pos > \$since and ch.pos <= 200005 and (ch.user_id = 'u0' or exists (select 1 from members mb
   where mb.conversation_id = ch.conversation_id and mb.user_id = 'u0')) order by ch.pos limit 501"
echo "== idle sync (token at the head)"
psql -h 127.0.0.1 -U postgres -d "$db" -c "explain (analyze, buffers, costs off) ${q//\$since/200005}"
echo "== 5 of the user's 10,000 conversations changed since the token"
psql -h 127.0.0.1 -U postgres -d "$db" -c "explain (analyze, buffers, costs off) ${q//\$since/200000}"
psql -h 127.0.0.1 -U postgres -qc "drop database $db"
