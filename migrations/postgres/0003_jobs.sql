-- Background jobs (the Messenger source): status, counts and the checkpoint a restarted
-- server resumes from.
create table jobs (
    job_id text primary key,
    kind text not null,
    -- running | completed | failed
    status text not null,
    params text not null,
    -- The Graph API cursor after the last committed page.
    checkpoint text,
    fetched bigint not null default 0,
    upserted bigint not null default 0,
    messages bigint not null default 0,
    error text,
    -- A node's claim on a running job; an expired lease is resumed by any node.
    lease_until bigint not null default 0,
    created_at bigint not null,
    updated_at bigint not null
);
create index jobs_running on jobs (status, lease_until);
