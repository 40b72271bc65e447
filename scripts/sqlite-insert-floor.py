#!/usr/bin/env python3
"""SQLite's own cost of the import's message insert, without any of Confab's code, by schema
variant: `insert ... select` of N rows from an in-memory staging table into `messages`, in
100,000-row transactions, synchronous=FULL, WAL, a 128 MiB cache, the foreign key on, rows
grouped by conversation inside a batch (as the importer writes them). Python's own SQLite, so
compare the variants with each other and the import with the first one. Usage:
    python3 scripts/sqlite-insert-floor.py [ROWS] [VARIANT,...]
Variants: current (the schema of migrations/sqlite up to 0004, with the created_at index),
no_created_at (the schema since 0005, which dropped that index), wr (WITHOUT ROWID keyed by
(conversation_id, seq)), wr_no_created_at, rowid_int_pk. Databases go to /tmp/schema-exp/.
"""
import os, random, sqlite3, sys, time, uuid

N = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["current", "no_created_at", "wr", "wr_no_created_at"]
CONVS, BATCH = 10_000, 100_000
random.seed(1)

COLS = """conversation_id text not null references conversations (conversation_id),
    seq bigint not null, sender_id text, client_id text, kind text not null, text text,
    encrypted text, attachments text not null default '[]', parent_id text,
    custom text not null default '{}', external_id text, created_at bigint not null,
    edited_at bigint, deleted_at bigint"""
SCHEMAS = {
    "current": f"""create table messages (message_id text primary key, {COLS}, unique (conversation_id, seq));
        create index messages_created_at on messages (created_at);""",
    "no_created_at": f"""create table messages (message_id text primary key, {COLS}, unique (conversation_id, seq));""",
    "wr": f"""create table messages (message_id text not null unique, {COLS}, primary key (conversation_id, seq)) without rowid;
        create index messages_created_at on messages (created_at);""",
    "wr_no_created_at": f"""create table messages (message_id text not null unique, {COLS}, primary key (conversation_id, seq)) without rowid;""",
    "rowid_int_pk": f"""create table messages (message_id text not null unique, {COLS}, unique (conversation_id, seq));
        create index messages_created_at on messages (created_at);""",
}
COMMON = """create unique index messages_client_id on messages (conversation_id, sender_id, client_id) where client_id is not null;
    create unique index messages_external_id on messages (external_id) where external_id is not null;"""

def rows():
    t0 = 1_600_000_000_000
    seqs = [0] * CONVS
    out = []
    for b in range(N // BATCH):
        batch = []
        for i in range(BATCH):
            c = random.randrange(CONVS)
            seqs[c] += 1
            t = t0 + (b * BATCH + i) * 10
            mid = str(uuid.UUID(int=(t << 80) | random.getrandbits(80)))
            batch.append((b, mid, f"c{c:08d}", seqs[c], f"u{c % 5000}", "text", "x" * 30, f"ext-{b}-{i}", t))
        batch.sort(key=lambda r: (r[2], r[3]))
        out.extend(batch)
    return out

data = rows()
os.makedirs("/tmp/schema-exp", exist_ok=True)
for v in variants:
    path = f"/tmp/schema-exp/{v}.db"
    for suf in ("", "-wal", "-shm"):
        try: os.remove(path + suf)
        except FileNotFoundError: pass
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("pragma journal_mode=wal; pragma synchronous=full; pragma cache_size=-131072; pragma foreign_keys=on;")
    db.executescript("create table conversations (conversation_id text primary key, x int);")
    db.executemany("insert into conversations values (?, 0)", [(f"c{c:08d}",) for c in range(CONVS)])
    db.executescript(SCHEMAS[v] + COMMON)
    db.execute("attach ':memory:' as s")
    db.execute("create table s.stage (b, message_id, conversation_id, seq, sender_id, kind, text, external_id, created_at)")
    db.executemany("insert into s.stage values (?,?,?,?,?,?,?,?,?)", data)
    start = time.perf_counter()
    for b in range(N // BATCH):
        db.execute("begin")
        db.execute("""insert into messages (message_id, conversation_id, seq, sender_id, kind, text, external_id, created_at)
            select message_id, conversation_id, seq, sender_id, kind, text, external_id, created_at from s.stage where b = ? order by rowid""", (b,))
        db.execute("commit")
    el = time.perf_counter() - start
    print(f"{v:18s} {el:6.2f} s  {el / N * 1e6:5.1f} us/row  {N / el:8.0f} rows/s", flush=True)
    db.close()
