//! Schema migrations, embedded in the binary: one ordered list per backend, each applied once in
//! its own transaction and recorded in `confab_migrations`.

/// `(version, name, sql)`, in order.
pub type Migration = (i64, &'static str, &'static str);

pub const SQLITE: &[Migration] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "webhooks",
        include_str!("../../migrations/sqlite/0002_webhooks.sql"),
    ),
];

pub const POSTGRES: &[Migration] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "webhooks",
        include_str!("../../migrations/postgres/0002_webhooks.sql"),
    ),
];

pub const CREATE_TABLE: &str = "create table if not exists confab_migrations (
    version bigint primary key, name text not null, applied_at bigint not null)";
