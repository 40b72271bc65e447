-- The webhook outbox: one row per event to deliver, written in the same transaction as the
-- change it announces. `delivery_id` is the stable `webhook-id`.
create table webhook_deliveries (
    delivery_id text primary key,
    pos bigint not null,
    conversation_id text not null,
    kind text not null,
    -- The whole body that is sent, fixed at commit time.
    payload text not null,
    -- pending | delivered | dead
    status text not null,
    attempts bigint not null default 0,
    next_attempt_at bigint not null,
    -- A worker's claim; an expired lease is claimable again (its worker died).
    lease_until bigint not null default 0,
    last_error text,
    created_at bigint not null,
    delivered_at bigint
);
create index webhook_deliveries_due on webhook_deliveries (status, next_attempt_at);
create index webhook_deliveries_order on webhook_deliveries (conversation_id, status, pos);
create index webhook_deliveries_listing on webhook_deliveries (status, pos);

-- Sync tokens below this position cannot be served (retention deleted their changes).
insert into counters (name, value) values ('changes_floor', 0);
