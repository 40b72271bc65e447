//! Schema migrations, embedded in the binary: one ordered list per backend, applied in one
//! transaction at start and recorded in `confab_migrations`.

/// `(version, name, sql)`, in order.
pub type Migration = (i64, &'static str, &'static str);

macro_rules! migrations {
    ($dir:literal: $(($v:literal, $name:literal, $file:literal)),* $(,)?) => {
        &[$(($v, $name, include_str!(concat!("../../migrations/", $dir, "/", $file)))),*]
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite":
    (1, "init", "0001_init.sql"),
    (2, "webhooks", "0002_webhooks.sql"),
    (3, "jobs", "0003_jobs.sql"),
    (4, "member_activity", "0004_member_activity.sql"),
    (5, "retention_by_conversation", "0005_retention_by_conversation.sql"),
);

pub const POSTGRES: &[Migration] = migrations!("postgres":
    (1, "init", "0001_init.sql"),
    (2, "webhooks", "0002_webhooks.sql"),
    (3, "jobs", "0003_jobs.sql"),
    (4, "bulk_writes", "0004_bulk_writes.sql"),
    (5, "member_activity", "0005_member_activity.sql"),
    (6, "retention_by_conversation", "0006_retention_by_conversation.sql"),
    (7, "binary_ids", "0007_binary_ids.sql"),
);

pub const CREATE_TABLE: &str = "create table if not exists confab_migrations (
    version bigint primary key, name text not null, applied_at bigint not null)";
