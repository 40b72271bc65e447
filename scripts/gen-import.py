#!/usr/bin/env python3
"""Writes an NDJSON import file: USERS users, CONVS conversations (direct and groups), MESSAGES
messages spread over them with increasing timestamps. Usage:
    python3 scripts/gen-import.py OUT.ndjson [--messages 1000000] [--conversations 10000]
"""
import argparse, json, random

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--messages", type=int, default=1_000_000)
p.add_argument("--conversations", type=int, default=10_000)
p.add_argument("--users", type=int, default=5_000)
p.add_argument("--seed", type=int, default=7)
a = p.parse_args()
rnd = random.Random(a.seed)
base = 1_600_000_000  # seconds
with open(a.out, "w") as f:
    for u in range(a.users):
        f.write(json.dumps({"record": "user", "id": f"iu{u}", "name": f"Imported User {u}"}) + "\n")
    members = {}
    pairs = set()
    for c in range(a.conversations):
        if c % 4 == 0:
            ms = rnd.sample(range(a.users), 5)
            kind = "group"
        else:
            # One direct conversation per pair, as Confab keeps them.
            while True:
                ms = rnd.sample(range(a.users), 2)
                if tuple(sorted(ms)) not in pairs:
                    pairs.add(tuple(sorted(ms)))
                    break
            kind = "direct"
        members[c] = ms
        f.write(json.dumps({"record": "conversation", "external_id": f"ic{c}", "type": kind,
                            "member_ids": [f"iu{m}" for m in ms], "name": f"Conv {c}" if kind == "group" else None}) + "\n")
    for i in range(a.messages):
        c = rnd.randrange(a.conversations)
        t = base + i
        f.write(json.dumps({"record": "message", "conversation_external_id": f"ic{c}", "external_id": f"im{i}",
                            "sender_id": f"iu{rnd.choice(members[c])}", "text": f"imported message number {i}",
                            "created_at": f"{__import__('time').strftime('%Y-%m-%dT%H:%M:%S', __import__('time').gmtime(t))}.000Z"}) + "\n")
