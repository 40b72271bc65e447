//! The storage contract, on both backends: every trait method, with the edge cases (empty
//! pages, cursor at the end, unknown ids), and the bounded query count of a listing.

use serde_json::json;

use confab::domain::{ChangeKind, SendInput, UserInput};
use confab::storage::{
    Actor, ConversationPatch, DynStore, ListFilter, NewConversation, PageBound, StoreError,
    UserState, WriteOp, WriteOutcome,
};

use crate::both;
use crate::helpers::{Db, fresh_database, spawn_app};

both!(
    store_contract,
    listing_query_count_is_bounded,
    outbox_leases,
    batched_creates,
    retention_by_conversation
);

async fn open(db: Db) -> DynStore {
    open_at(&fresh_database(db).await).await
}

async fn open_at(url: &str) -> DynStore {
    confab::storage::open_url(url, std::time::Duration::from_secs(5), 4)
        .await
        .unwrap()
}

/// The first page of ten of `user`'s conversations.
async fn first_ten(s: &DynStore, user: &str) -> confab::storage::ConversationPage {
    s.list_conversations(
        user,
        &ListFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// A group of a and b with two messages from a; its id.
async fn group_of_two_messages(s: &DynStore) -> String {
    let (g, _) = s
        .create_conversation(&group(&["a", "b"], Some("a")))
        .await
        .unwrap()
        .value;
    s.write_batch(&[send(&g, "a", "1"), send(&g, "a", "2")])
        .await
        .unwrap();
    g
}

fn group(members: &[&str], creator: Option<&str>) -> NewConversation {
    NewConversation {
        kind: "group".into(),
        member_ids: members.iter().map(|s| s.to_string()).collect(),
        created_by: creator.map(str::to_owned),
        name: None,
        image_url: None,
        custom: json!({}),
        tags: vec![],
        external_id: None,
    }
}

fn send(conv: &str, from: &str, client_id: &str) -> WriteOp {
    WriteOp::Send {
        conversation_id: conv.into(),
        sender_id: from.into(),
        input: Box::new(SendInput {
            client_id: Some(client_id.into()),
            text: Some(format!("text {client_id}")),
            ..Default::default()
        }),
    }
}

async fn store_contract(db: Db) {
    let s = open(db).await;
    let backend = s.backend();
    assert_eq!(
        backend == confab::storage::Backend::Postgres,
        db == Db::Postgres
    );
    s.ping().await.unwrap();

    // settings
    assert_eq!(s.setting("k").await.unwrap(), None);
    assert_eq!(s.setting_or_insert("k", "v1").await.unwrap(), "v1");
    assert_eq!(
        s.setting_or_insert("k", "v2").await.unwrap(),
        "v1",
        "the first value is kept"
    );

    // users
    assert!(s.get_users(&[]).await.unwrap().is_empty());
    let up = s
        .upsert_users(&[UserInput {
            id: "a".into(),
            name: Some("A".into()),
            ..Default::default()
        }])
        .await
        .unwrap();
    assert_eq!(up[0].name, "A");
    assert!(s.get_users(&["nobody".into()]).await.unwrap().is_empty());
    assert_eq!(s.user_state("b").await.unwrap(), None);
    let batch = s
        .write_batch(&[
            WriteOp::EnsureUser {
                user_id: "b".into(),
            },
            WriteOp::EnsureUser {
                user_id: "a".into(),
            },
        ])
        .await
        .unwrap();
    assert!(matches!(
        batch.outcomes[..],
        [
            Ok(WriteOutcome::User(UserState::Active)),
            Ok(WriteOutcome::User(UserState::Active))
        ]
    ));
    assert!(batch.changes.is_empty());
    assert_eq!(s.user_state("b").await.unwrap(), Some(UserState::Active));
    assert_eq!(
        s.get_users(&["b".into()]).await.unwrap()[0].name,
        "b",
        "created bare"
    );
    assert!(matches!(
        s.deactivate_user("nobody").await,
        Err(StoreError::NotFound)
    ));
    s.deactivate_user("b").await.unwrap();
    assert_eq!(
        s.user_state("b").await.unwrap(),
        Some(UserState::Deactivated)
    );
    let batch = s
        .write_batch(&[WriteOp::EnsureUser {
            user_id: "b".into(),
        }])
        .await
        .unwrap();
    assert!(
        matches!(
            batch.outcomes[..],
            [Ok(WriteOutcome::User(UserState::Deactivated))]
        ),
        "a deactivated user stays deactivated"
    );
    // A create whose creator was deactivated after its request was let in creates nothing.
    let before = s.last_position().await.unwrap();
    let batch = s
        .write_batch(&[WriteOp::Create(Box::new(group(&["b", "a"], Some("b"))))])
        .await
        .unwrap();
    assert!(matches!(
        &batch.outcomes[..],
        [Err(StoreError::Forbidden(why))] if *why == confab::storage::CREATOR_DEACTIVATED
    ));
    assert!(batch.changes.is_empty());
    assert_eq!(s.last_position().await.unwrap(), before);

    // conversations
    let created = s
        .create_conversation(&group(&["a", "c"], Some("a")))
        .await
        .unwrap();
    let (g, fresh) = created.value;
    assert!(fresh);
    assert_eq!(created.changes.len(), 1);
    assert_eq!(created.changes[0].kind, ChangeKind::ConversationCreated);
    assert!(
        s.conversations_for(Some("a"), &[], 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.conversations_for(Some("zz"), std::slice::from_ref(&g), 0)
            .await
            .unwrap()
            .is_empty(),
        "not a member"
    );
    assert!(
        s.conversations_for(Some("a"), &["nope".into()], 0)
            .await
            .unwrap()
            .is_empty()
    );
    let view = s
        .conversations_for(Some("c"), std::slice::from_ref(&g), 0)
        .await
        .unwrap();
    assert_eq!(view[0].members[0].user_id, "c");
    assert_eq!(view[0].members[1].role, "owner");
    let server_view = s
        .conversations_for(None, std::slice::from_ref(&g), 0)
        .await
        .unwrap();
    assert_eq!(server_view[0].member_count, 2);

    // write path: a batch with a send, a replay, a non-member and a read, in one transaction
    let batch = s
        .write_batch(&[
            send(&g, "a", "x1"),
            send(&g, "a", "x1"),
            send(&g, "zz", "x2"),
            send("nope", "a", "x3"),
            WriteOp::Read {
                conversation_id: g.clone(),
                user_id: "c".into(),
                seq: None,
            },
        ])
        .await
        .unwrap();
    let o = &batch.outcomes;
    assert!(matches!(&o[0], Ok(WriteOutcome::Sent { created: true, message }) if message.seq == 1));
    assert!(
        matches!(&o[1], Ok(WriteOutcome::Sent { created: false, message }) if message.seq == 1)
    );
    assert!(matches!(&o[2], Err(StoreError::NotFound)));
    assert!(matches!(&o[3], Err(StoreError::NotFound)));
    assert!(matches!(&o[4], Ok(WriteOutcome::Read { last_read_seq: 1 })));
    let kinds: Vec<ChangeKind> = batch.changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::MessageNew, ChangeKind::Read]);
    assert!(batch.changes[0].pos < batch.changes[1].pos);
    assert_eq!(s.last_position().await.unwrap(), batch.changes[1].pos);
    let Ok(WriteOutcome::Sent { message: first, .. }) = &o[0] else {
        unreachable!()
    };
    let first = first.clone();

    // paging
    let (page, more) = s
        .page_messages("a", &g, PageBound::Newest, 10)
        .await
        .unwrap();
    assert_eq!((page.len(), more), (1, false));
    let (page, more) = s
        .page_messages("a", &g, PageBound::After(1), 10)
        .await
        .unwrap();
    assert_eq!((page.len(), more), (0, false), "cursor at the end");
    assert!(matches!(
        s.page_messages("zz", &g, PageBound::Newest, 10).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.page_messages("a", "nope", PageBound::Newest, 10).await,
        Err(StoreError::NotFound)
    ));

    // edit, delete
    let mid = page_first_id(&s, &g).await;
    let me = Actor::User("a".into());
    let e = s
        .edit_message(&me, &mid, Some("edited"), None)
        .await
        .unwrap();
    assert_eq!(e.value.text.as_deref(), Some("edited"));
    assert!(matches!(
        s.edit_message(&Actor::User("c".into()), &mid, Some("x"), None)
            .await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        s.edit_message(&me, "nope", Some("x"), None).await,
        Err(StoreError::NotFound)
    ));
    let d = s.delete_message(&Actor::Server, &mid).await.unwrap();
    assert!(d.value.deleted_at.is_some() && d.value.text.is_none());

    // update, tags, members
    let u = s
        .update_conversation(
            &me,
            &g,
            &ConversationPatch {
                name: Some(Some("N".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        u.changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [ChangeKind::MessageNew, ChangeKind::ConversationUpdated]
    );
    let none = s
        .update_conversation(&me, &g, &ConversationPatch::default())
        .await
        .unwrap();
    assert!(none.changes.is_empty());
    assert!(matches!(
        s.update_conversation(&Actor::User("zz".into()), &g, &ConversationPatch::default())
            .await,
        Err(StoreError::NotFound)
    ));
    let t = s
        .set_tags(&Actor::Server, &g, &["t1".into()])
        .await
        .unwrap();
    assert_eq!(t.changes.len(), 1);
    assert!(
        s.set_tags(&Actor::Server, &g, &["t1".into()])
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    let add = s
        .add_members(&me, &g, &["d".into(), "c".into()])
        .await
        .unwrap();
    let kinds: Vec<_> = add
        .changes
        .iter()
        .map(|c| (c.kind, c.user_id.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::MemberJoined, Some("d".into())),
            (ChangeKind::MessageNew, None)
        ]
    );
    assert!(matches!(
        s.remove_member(&Actor::User("c".into()), &g, "d").await,
        Err(StoreError::Forbidden(_))
    ));
    let rm = s
        .remove_member(&Actor::User("d".into()), &g, "d")
        .await
        .unwrap();
    assert_eq!(rm.changes[0].kind, ChangeKind::MemberLeft);
    assert!(matches!(
        s.remove_member(&me, &g, "d").await,
        Err(StoreError::NotFound)
    ));

    // unread and changes
    let unread = s.unread("c").await.unwrap();
    assert_eq!(
        unread,
        vec![(g.clone(), 3)],
        "rename, members_added, member_left; the tombstone is not unread"
    );
    assert!(s.unread("nobody").await.unwrap().is_empty());
    let all = s.changes_for("c", 0, i64::MAX, 1000).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].pos < w[1].pos));
    let d_changes = s.changes_for("d", 0, i64::MAX, 1000).await.unwrap();
    assert!(
        d_changes.iter().any(|c| c.kind == ChangeKind::MemberLeft),
        "the user who left sees it"
    );
    let top = s.last_position().await.unwrap();
    assert!(s.changes_for("c", top, top, 10).await.unwrap().is_empty());
    assert_eq!(s.changes_for("c", 0, i64::MAX, 2).await.unwrap().len(), 2);

    // listing: empty, and the end
    let f = ListFilter {
        limit: 10,
        ..Default::default()
    };
    assert!(
        s.list_conversations("nobody", &f)
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    let page = s.list_conversations("c", &f).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert!(page.next.is_none());
    let after_end = ListFilter {
        limit: 10,
        cursor: Some((0, String::new())),
        include_total: true,
        ..Default::default()
    };
    let page = s.list_conversations("c", &after_end).await.unwrap();
    assert!(page.conversations.is_empty());
    assert_eq!(page.total, Some(1));

    // a batch over two conversations: seqs per conversation in arrival order, a parent in the
    // same conversation accepted and one from another refused, the senders' read positions
    let (h, _) = s
        .create_conversation(&group(&["a", "c"], Some("a")))
        .await
        .unwrap()
        .value;
    let g_last = s
        .conversations_for(Some("c"), std::slice::from_ref(&g), 0)
        .await
        .unwrap()[0]
        .last_seq;
    let reply = |conv: &str, from: &str, key: &str| {
        let mut op = send(conv, from, key);
        if let WriteOp::Send { input, .. } = &mut op {
            input.parent_id = Some(first.id.clone());
        }
        op
    };
    let batch = s
        .write_batch(&[
            send(&h, "a", "h1"),
            reply(&g, "c", "g2"),
            send(&h, "c", "h2"),
            reply(&h, "a", "h3"),
            send(&h, "c", "h2"),
            WriteOp::Read {
                conversation_id: h.clone(),
                user_id: "a".into(),
                seq: None,
            },
        ])
        .await
        .unwrap();
    let seq_of = |o: &Result<WriteOutcome, StoreError>| match o {
        Ok(WriteOutcome::Sent { message, created }) => {
            (message.conversation_id.clone(), message.seq, *created)
        }
        other => panic!("{other:?}"),
    };
    let o = &batch.outcomes;
    assert_eq!(seq_of(&o[0]), (h.clone(), 1, true));
    assert_eq!(seq_of(&o[1]), (g.clone(), g_last + 1, true));
    assert_eq!(seq_of(&o[2]), (h.clone(), 2, true));
    assert!(
        matches!(
            &o[3],
            Err(StoreError::Invalid {
                field: "parent_id",
                ..
            })
        ),
        "{:?}",
        o[3]
    );
    assert_eq!(
        seq_of(&o[4]),
        (h.clone(), 2, false),
        "a replay within the batch"
    );
    assert!(matches!(&o[5], Ok(WriteOutcome::Read { last_read_seq: 2 })));
    let kinds: Vec<ChangeKind> = batch.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::MessageNew,
            ChangeKind::MessageNew,
            ChangeKind::MessageNew,
            ChangeKind::Read
        ]
    );
    let (page, _) = s
        .page_messages("c", &h, PageBound::Newest, 10)
        .await
        .unwrap();
    let texts: Vec<&str> = page.iter().filter_map(|m| m.text.as_deref()).collect();
    assert_eq!(texts, ["text h1", "text h2"]);
    let view = s
        .conversations_for(Some("c"), std::slice::from_ref(&h), 0)
        .await
        .unwrap();
    assert_eq!(view[0].last_seq, 2);
    assert_eq!(view[0].unread_count, 0, "c sent the last message");
    let (page, _) = s
        .page_messages("c", &g, PageBound::Newest, 10)
        .await
        .unwrap();
    assert_eq!(
        page.last().unwrap().parent_id.as_deref(),
        Some(first.id.as_str())
    );
}

async fn page_first_id(s: &DynStore, g: &str) -> String {
    let (page, _) = s.page_messages("a", g, PageBound::Newest, 1).await.unwrap();
    page[0].id.clone()
}

/// One listing request costs the same number of queries whatever its page size.
async fn listing_query_count_is_bounded(db: Db) {
    let app = spawn_app(db).await;
    let others: Vec<String> = (0..60).map(|i| format!("o{i}")).collect();
    for (i, o) in others.iter().enumerate() {
        let g = app.conversation("me", "group", &[o, "x", "y"]).await;
        if i % 2 == 0 {
            app.send(o, &g, "c", "hi").await;
        }
    }
    let t = app.user("me");
    let mut counts = Vec::new();
    for limit in [1, 10, 50, 100] {
        for q in ["", "&include_total=true&tags=a&q=o&unread_only=true"] {
            let before = app.store.query_count();
            let page = app
                .get(&format!("/v1/conversations?limit={limit}{q}"), &t)
                .await
                .expect(200);
            let used = app.store.query_count() - before;
            if q.is_empty() {
                assert_eq!(
                    page["conversations"].as_array().unwrap().len(),
                    limit.min(60)
                );
            }
            counts.push((limit, q, used));
        }
    }
    let plain: Vec<u64> = counts
        .iter()
        .filter(|c| c.1.is_empty())
        .map(|c| c.2)
        .collect();
    assert!(
        plain.windows(2).all(|w| w[0] == w[1]),
        "grows with page size: {counts:?}"
    );
    assert_eq!(
        plain[0], 1,
        "a listing is one statement (rows, last messages, tags, members, unread): {counts:?}"
    );
}

/// The outbox: deliveries are written with their change, claimed with a lease, one per
/// conversation at a time, and claimed again once the lease of a dead worker expires.
async fn outbox_leases(db: Db) {
    struct NobodyOnline;
    impl confab::storage::Outbox for NobodyOnline {
        fn is_online(&self, _: &str) -> bool {
            false
        }
    }
    let s = open(db).await;
    s.enable_outbox(std::sync::Arc::new(NobodyOnline));
    group_of_two_messages(&s).await;
    let (_h, _) = s
        .create_conversation(&group(&["a"], None))
        .await
        .unwrap()
        .value;
    let now = confab::domain::Timestamp::now().0;
    // One per conversation: g's creation and h's creation, not g's messages yet.
    let first = s.claim_deliveries(now, 1_000, 10).await.unwrap();
    let kinds: Vec<&str> = first.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["conversation.created", "conversation.created"]);
    // Leased: nothing more to claim until the lease ends or the attempt is recorded.
    assert!(s.claim_deliveries(now, 1_000, 10).await.unwrap().is_empty());
    // The worker "dies"; after the lease, the same delivery is claimed again.
    let again = s.claim_deliveries(now + 1_001, 1_000, 10).await.unwrap();
    assert_eq!(
        again.iter().map(|d| &d.id).collect::<Vec<_>>(),
        first.iter().map(|d| &d.id).collect::<Vec<_>>()
    );
    // Recorded: the next of g's events comes up, with offline members in the body.
    s.finish_delivery(&again[0].id, &confab::storage::AttemptResult::Delivered)
        .await
        .unwrap();
    let next = s.claim_deliveries(now + 2_002, 1_000, 10).await.unwrap();
    let msg = next
        .iter()
        .find(|d| d.kind == "message.new")
        .expect("g's first message");
    assert_eq!(msg.payload["data"]["offline_member_ids"], json!(["b"]));
    assert_eq!(msg.payload["data"]["seq"], 1);
    let failed = confab::storage::AttemptResult::Failed {
        error: "HTTP 500".into(),
        retry_at: None,
    };
    s.finish_delivery(&msg.id, &failed).await.unwrap();
    let dead = s.list_deliveries(Some("dead"), 0, 10).await.unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 1));
    assert_eq!(
        s.retry_delivery(&msg.id, now).await.unwrap().status,
        "pending"
    );
    assert!(matches!(
        s.retry_delivery("nope", now).await,
        Err(StoreError::NotFound)
    ));
}

fn create(kind: &str, members: &[&str], external_id: Option<&str>, tags: &[&str]) -> WriteOp {
    let mut new = group(members, Some(members[0]));
    new.kind = kind.into();
    new.external_id = external_id.map(str::to_owned);
    new.tags = tags.iter().map(|t| t.to_string()).collect();
    WriteOp::Create(Box::new(new))
}

fn created(o: &Result<WriteOutcome, StoreError>) -> (String, bool) {
    match o {
        Ok(WriteOutcome::Created { id, created }) => (id.clone(), *created),
        other => panic!("not a create: {other:?}"),
    }
}

/// Creates share the write path's batches: a pair or external id named twice in one batch is
/// one conversation, one named again later is the existing one, and sends in the same batch
/// as creates still work.
async fn batched_creates(db: Db) {
    let s = open(db).await;
    let batch = s
        .write_batch(&[
            create("direct", &["a", "b"], None, &[]),
            create(
                "group",
                &["a", "c", "d"],
                Some("ext-1"),
                &["vip", "eu", "vip"],
            ),
            create("direct", &["b", "a"], None, &[]),
            create("group", &["c"], Some("ext-1"), &[]),
            create("direct", &["c", "d"], None, &[]),
        ])
        .await
        .unwrap();
    let o = &batch.outcomes;
    let (ab, ab_new) = created(&o[0]);
    let (g, g_new) = created(&o[1]);
    let (cd, cd_new) = created(&o[4]);
    assert!(ab_new && g_new && cd_new);
    assert_eq!(created(&o[2]), (ab.clone(), false), "the pair again");
    assert_eq!(created(&o[3]), (g.clone(), false), "the external id again");
    assert_eq!(
        [&ab, &g, &cd]
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    // One change per new conversation, in the order the batch received them.
    let made: Vec<(&str, ChangeKind)> = batch
        .changes
        .iter()
        .map(|c| (c.conversation_id.as_str(), c.kind))
        .collect();
    assert_eq!(
        made,
        [
            (ab.as_str(), ChangeKind::ConversationCreated),
            (g.as_str(), ChangeKind::ConversationCreated),
            (cd.as_str(), ChangeKind::ConversationCreated),
        ]
    );
    assert_eq!(batch.changes[1].data["tags"], json!(["eu", "vip"]));
    assert_eq!(batch.changes[1].data["member_ids"], json!(["a", "c", "d"]));
    let view = s
        .conversations_for(Some("c"), std::slice::from_ref(&g), 0)
        .await
        .unwrap();
    assert_eq!(view[0].member_count, 3);
    assert_eq!(view[0].external_id.as_deref(), Some("ext-1"));
    let roles: Vec<(&str, &str)> = view[0]
        .members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role.as_str()))
        .collect();
    assert!(
        roles.contains(&("a", "owner")) && roles.contains(&("d", "member")),
        "{roles:?}"
    );
    // The users were made bare.
    assert_eq!(s.user_state("d").await.unwrap(), Some(UserState::Active));

    // Later: the existing pair, a new one, and a send into a conversation of the first batch.
    let batch = s
        .write_batch(&[
            create("direct", &["b", "a"], None, &[]),
            send(&ab, "a", "k1"),
            create("direct", &["a", "e"], None, &[]),
        ])
        .await
        .unwrap();
    let o = &batch.outcomes;
    assert_eq!(created(&o[0]), (ab.clone(), false));
    assert!(matches!(&o[1], Ok(WriteOutcome::Sent { created: true, message }) if message.seq == 1));
    let (ae, ae_new) = created(&o[2]);
    assert!(ae_new && ae != ab);
    let kinds: Vec<ChangeKind> = batch.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [ChangeKind::ConversationCreated, ChangeKind::MessageNew]
    );
    let page = first_ten(&s, "a").await;
    assert_eq!(page.conversations.len(), 3, "ab, the group and ae");
}

/// A retention pass beside a send on PostgreSQL. The pass locks each conversation whose old
/// messages it deletes, as sends do, and skips one a send holds instead of waiting for it while
/// holding the others (which could deadlock with a batch that locks several): the others'
/// old messages are gone, committed, while it then waits for the held one alone. Once the
/// send commits, that one's old messages go too, and the send's message stays its last and
/// becomes its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_skips_a_conversation_a_send_holds() {
    use sqlx::Connection;
    let url = fresh_database(Db::Postgres).await;
    let s = open_at(&url).await;
    let held = group_of_two_messages(&s).await;
    let other = group_of_two_messages(&s).await;
    let now = confab::domain::Timestamp::now().0;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("update messages set created_at = created_at - 172800000")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("update conversations set first_message_at = first_message_at - 172800000")
        .execute(&mut c)
        .await
        .unwrap();
    // The held conversation older still, so that the pass comes to it first.
    sqlx::query("update messages set created_at = created_at - 1000 where conversation_id = $1")
        .bind(&held)
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(
        "update conversations set first_message_at = first_message_at - 1000 where conversation_id = $1",
    )
    .bind(&held)
    .execute(&mut c)
    .await
    .unwrap();
    // The send, written but not committed: its message and the conversation's new last one.
    let mut send_tx = c.begin().await.unwrap();
    sqlx::query(
        "insert into messages (message_id, conversation_id, seq, sender_id, kind, text, created_at) \
         values ('m_new', $1, 3, 'a', 'text', 'new', $2)",
    )
    .bind(&held)
    .bind(now)
    .execute(&mut *send_tx)
    .await
    .unwrap();
    sqlx::query(
        "update conversations set last_seq = 3, last_message_id = 'm_new' where conversation_id = $1",
    )
    .bind(&held)
    .execute(&mut *send_tx)
    .await
    .unwrap();
    let cutoff = now - 86_400_000;
    let purge = tokio::spawn({
        let s = s.clone();
        async move { s.purge_before(cutoff, 500).await }
    });
    let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut waited = 0;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and wait_event_type = 'Lock' and query like 'select c.conversation_id from conversations c%'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        waited += 1;
        assert!(
            waited < 500,
            "the retention pass never waited on the held conversation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let count = |conv: String| {
        let url = url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>("select count(*) from messages where conversation_id = $1")
                .bind(conv)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count(other.clone()).await,
        0,
        "the other conversation was purged first"
    );
    assert_eq!(
        count(held.clone()).await,
        2,
        "the held one waits for its send"
    );
    send_tx.commit().await.unwrap();
    let purged = purge.await.unwrap().unwrap();
    assert_eq!((purged.messages, purged.conversations), (4, 2));
    let (last, first): (Option<String>, Option<i64>) = sqlx::query_as(
        "select last_message_id, first_message_at from conversations where conversation_id = $1",
    )
    .bind(&held)
    .fetch_one(&mut watch)
    .await
    .unwrap();
    assert_eq!(last.as_deref(), Some("m_new"));
    assert_eq!(
        first,
        Some(now),
        "the conversation starts at the send's message"
    );
    let again = s.purge_before(cutoff, 500).await.unwrap();
    assert_eq!((again.messages, again.conversations), (0, 0));
}

fn imported(conv: &str, ext: &str, created_at: i64) -> confab::storage::ImportMessage {
    confab::storage::ImportMessage {
        line: 1,
        conversation_external_id: conv.into(),
        external_id: ext.into(),
        sender_id: Some("a".into()),
        kind: "regular".into(),
        text: Some(ext.into()),
        encrypted: None,
        attachments: json!([]),
        custom: json!({}),
        created_at,
        unread: false,
    }
}

fn texts(page: &[confab::domain::Message]) -> Vec<(i64, &str)> {
    page.iter()
        .map(|m| (m.seq, m.text.as_deref().unwrap_or("")))
        .collect()
}

/// Retention finds old messages through their conversations' first message: imported history
/// older than the window goes (a prefix of each conversation, in batches), newer messages and
/// other conversations stay, a conversation left with nothing has no first or last message,
/// and an import of a message older than the conversation's first makes it the first (and
/// retention finds it).
async fn retention_by_conversation(db: Db) {
    let s = open(db).await;
    let now = confab::domain::Timestamp::now().0;
    let day = 86_400_000;
    let conv = |ext: &str| confab::storage::ImportConversation {
        line: 1,
        external_id: ext.into(),
        kind: "group".into(),
        member_ids: vec!["a".into(), "b".into()],
        name: None,
        image_url: None,
        custom: json!({}),
        tags: vec![],
        created_at: Some(now - 10 * day),
    };
    let batch = confab::storage::ImportBatch {
        users: vec![],
        refresh_users: false,
        conversations: vec![conv("mixed"), conv("old")],
        messages: vec![
            imported("mixed", "m1", now - 3 * day),
            imported("mixed", "m2", now - 2 * day),
            imported("mixed", "m3", now - 3_600_000),
            imported("old", "o1", now - 4 * day),
            imported("old", "o2", now - 3 * day),
        ],
        grouped: None,
    };
    s.import_batch(&batch, &drop).await.unwrap();
    let live = group_of_two_messages(&s).await;
    let listed = first_ten(&s, "a").await;
    let id_of = |ext: &str| {
        listed
            .conversations
            .iter()
            .find(|c| c.external_id.as_deref() == Some(ext))
            .unwrap()
            .id
            .clone()
    };
    let (mixed, old) = (id_of("mixed"), id_of("old"));
    let page = |c: String| {
        let s = s.clone();
        async move {
            s.page_messages("a", &c, PageBound::Newest, 10)
                .await
                .unwrap()
                .0
        }
    };
    // One message a pass: four passes delete the four old ones, the oldest first.
    let cutoff = now - day;
    let first = s.purge_before(cutoff, 1).await.unwrap();
    assert_eq!((first.messages, first.conversations), (1, 1));
    assert_eq!(texts(&page(old.clone()).await), [(2, "o2")]);
    let mut deleted = vec![first.messages];
    for _ in 0..10 {
        let p = s.purge_before(cutoff, 1).await.unwrap();
        if p.messages == 0 && p.conversations == 0 {
            break;
        }
        deleted.push(p.messages);
    }
    assert_eq!(deleted, [1, 1, 1, 1]);
    assert_eq!(texts(&page(mixed.clone()).await), [(3, "m3")]);
    assert!(page(old.clone()).await.is_empty());
    assert_eq!(
        texts(&page(live.clone()).await),
        [(1, "text 1"), (2, "text 2")]
    );
    let views = s
        .conversations_for(Some("a"), &[mixed.clone(), old.clone()], 0)
        .await
        .unwrap();
    for v in &views {
        if v.id == old {
            assert!(v.last_message.is_none());
            assert_eq!(v.last_seq, 2, "seqs are never reused");
        } else {
            assert_eq!(v.last_message.as_ref().unwrap().text.as_deref(), Some("m3"));
        }
    }
    // History older than the conversation's first message, imported later: renumbered in
    // front, and the next pass finds it.
    let older = confab::storage::ImportBatch {
        users: vec![],
        refresh_users: false,
        conversations: vec![],
        messages: vec![imported("mixed", "m0", now - 5 * day)],
        grouped: None,
    };
    s.import_batch(&older, &drop).await.unwrap();
    let only_texts = |page: Vec<confab::domain::Message>| -> Vec<Option<String>> {
        page.into_iter().map(|m| m.text).collect()
    };
    assert_eq!(
        only_texts(page(mixed.clone()).await),
        [Some("m0".to_owned()), Some("m3".to_owned())]
    );
    let p = s.purge_before(cutoff, 500).await.unwrap();
    assert_eq!((p.messages, p.conversations), (1, 1));
    assert_eq!(
        only_texts(page(mixed.clone()).await),
        [Some("m3".to_owned())]
    );
    let p = s.purge_before(cutoff, 500).await.unwrap();
    assert_eq!(
        (p.messages, p.conversations),
        (0, 0),
        "nothing left to look at"
    );
}

/// The pool does not ping a connection before each use (sqlx's default, a round trip to the
/// backend per request), but does ping one that sat idle for a second: connections PostgreSQL
/// dropped while they were idle (a restart, an idle-session timeout, an administrator) are
/// replaced without an error reaching the caller. The store's ping retries past dead ones.
#[tokio::test]
async fn postgres_connections_dropped_while_idle_are_replaced() {
    use sqlx::Connection;
    let url = fresh_database(Db::Postgres).await;
    let s = open_at(&url).await;
    let reads = || futures_util::future::join_all((0..8).map(|_| s.last_position()));
    for r in reads().await {
        r.unwrap();
    }
    let name = url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::pg_admin_url())
        .await
        .unwrap();
    let mut terminate = async || {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
             where datname = $1 and pid <> pg_backend_pid()) t",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(n >= 1, "the pool's connections were terminated");
    };
    terminate().await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    for r in reads().await {
        r.expect("a connection dropped while idle is replaced, not handed out");
    }
    // Dropped while in use moments ago: a statement on one fails once, but the readiness ping
    // (what `/readyz` and the outage probe ask) tries again instead of reporting the database
    // down.
    terminate().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.ping()
        .await
        .expect("the ping gets past connections that died");
}

/// Ids and tags sort byte by byte on both backends, whatever collation the PostgreSQL database
/// was created with: here ICU's en-US, under which `a` sorts before `B`. A group's member preview
/// (the caller, then the first 19 of those who joined together, in user id order) is the same
/// on both; setting a group's tags to the ones it has changes nothing (the stored tags, read in
/// the database's order, equal the requested ones sorted in Rust); and every id, key and tag
/// column an index holds compares with collation "C".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_tags_sort_bytewise_on_both_backends() {
    use sqlx::Connection;
    let pg_url = crate::helpers::fresh_postgres_database_with(
        "template template0 locale_provider icu icu_locale 'en-US' locale 'C.UTF-8'",
    )
    .await;
    // The database's own order is en-US's, so the "C" below is the schema's doing.
    let mut conn = sqlx::PgConnection::connect(&pg_url).await.unwrap();
    let own: Vec<String> =
        sqlx::query_scalar("select x from unnest(array['b', 'B', 'a', 'A']) x order by x")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(own, ["a", "A", "b", "B"]);

    let sqlite_url = fresh_database(Db::Sqlite).await;
    for (db, url) in [(Db::Sqlite, sqlite_url), (Db::Postgres, pg_url)] {
        let app = crate::helpers::spawn_app_with(db, crate::helpers::test_config(&url)).await;
        let me = app.user("Zed");
        // A to U and a to u, 42 members besides the caller.
        let others: Vec<String> = (b'A'..=b'U')
            .chain(b'a'..=b'u')
            .map(|c| char::from(c).to_string())
            .collect();
        let g = app
            .post(
                "/v1/conversations",
                &me,
                json!({"type": "group", "member_ids": others, "tags": ["b", "B", "a", "A"]}),
            )
            .await
            .expect(201);
        assert_eq!(g["tags"], json!(["A", "B", "a", "b"]), "{db:?}");
        let id = g["id"].as_str().unwrap();
        let got = app
            .get(&format!("/v1/conversations/{id}"), &me)
            .await
            .expect(200);
        assert_eq!(got["tags"], json!(["A", "B", "a", "b"]), "{db:?}");
        let members: Vec<&str> = got["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        let mut want = vec!["Zed"];
        want.extend(others[..19].iter().map(String::as_str));
        assert_eq!(members, want, "{db:?}: {got}");
        // The same tags again, in another order: nothing to write, no update (a write would
        // stamp a later updated_at).
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.put(
            &format!("/v1/conversations/{id}/tags"),
            &me,
            json!({"tags": ["a", "A", "b", "B"]}),
        )
        .await
        .expect(200);
        let again = app
            .get(&format!("/v1/conversations/{id}"), &me)
            .await
            .expect(200);
        assert_eq!(again["updated_at"], got["updated_at"], "{db:?}: {again}");
        assert_eq!(again["tags"], json!(["A", "B", "a", "b"]), "{db:?}");
    }

    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "select distinct i.indexrelid::regclass::text, a.attname::text, coalesce(c.collname::text, '') \
         from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
         left join pg_collation c on c.oid = a.attcollation \
         join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace \
         where n.nspname = 'public' and a.atttypid = 'text'::regtype \
         and (a.attname like '%\\_id' or a.attname in ('direct_key', 'tag'))",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(columns.len() >= 12, "{columns:?}");
    for (index, column, collation) in &columns {
        assert_eq!(collation, "C", "{index} ({column})");
    }
}

/// SQLite: committed pages are copied from the WAL into the database file soon after each
/// commit, by a connection beside the writer, not once the WAL holds thousands of frames (the
/// writer's own limit). Read with `immutable`, which ignores the WAL, the file alone holds a
/// message moments after it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_beside_the_writer() {
    use sqlx::{ConnectOptions, Connection};
    let url = fresh_database(Db::Sqlite).await;
    let s = open_at(&url).await;
    let g = group_of_two_messages(&s).await;
    let path = url.trim_start_matches("sqlite://").to_owned();
    let file_alone = || async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .immutable(true)
            .connect()
            .await
            .unwrap();
        // Before the first checkpoint the file has not even the schema.
        let n: i64 = sqlx::query_scalar("select count(*) from messages where conversation_id = $1")
            .bind(&g)
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        conn.close().await.unwrap();
        n
    };
    let mut n = 0;
    for _ in 0..100 {
        n = file_alone().await;
        if n == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(n, 2, "the messages reached the database file");
}
