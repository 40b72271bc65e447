-- A user's conversation list is ordered by each conversation's last activity. Sorting the
-- conversations rows of all a user's memberships costs one row per membership (a user in 1,000
-- conversations: 400 ms per listing at 10,000,000 messages). Each membership carries a copy of
-- its conversation's activity time, written in the same statements that move the
-- conversation's, so that a page is a walk of 30 entries of `members_by_activity`.
alter table members add column activity_at bigint not null default 0;
update members m set activity_at = c.activity_at
    from conversations c where c.conversation_id = m.conversation_id;
create index members_by_activity on members (user_id, activity_at desc, conversation_id desc);
-- Every lookup by user alone is served by the new index's prefix.
drop index members_by_user;
