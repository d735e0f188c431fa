//! The ground under the coming `redis+cluster://` broker, checked on a real 3-master
//! cluster the test starts itself (`support::redis_cluster`): why the single-Redis key
//! scheme (`P:seq:C`, `P:hist:C`, `P:base:C`) cannot be used as is — its keys of one
//! channel fall in different slots, so the publish script is refused with CROSSSLOT — and
//! that the hash-tagged scheme (`P:{C}:seq`, `P:{C}:hist`, `P:{C}:base`) puts a channel's
//! keys in one slot, where one script may touch them all, and where its sharded pub/sub
//! channel `P:{C}:live` lives too.

mod support;

use support::redis_cluster::RedisCluster;

/// A script touching three keys, as the publish script does.
const THREE_KEYS: &str =
    "redis.call('INCR', KEYS[1]); redis.call('SET', KEYS[2], 'x'); redis.call('SET', KEYS[3], 'y'); return 'ok'";

fn slot(cluster: &RedisCluster, key: &str) -> String {
    cluster
        .cli(&["CLUSTER", "KEYSLOT", key])
        .expect("CLUSTER KEYSLOT")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_keys_share_a_slot_only_with_a_hash_tag() {
    let cluster = RedisCluster::start().await;
    let channel = "chat:room-42";
    let old: Vec<String> = ["seq", "hist", "base"]
        .iter()
        .map(|kind| format!("tt:{kind}:{channel}"))
        .collect();
    let tagged: Vec<String> = ["seq", "hist", "base", "live"]
        .iter()
        .map(|kind| format!("tt:{{{channel}}}:{kind}"))
        .collect();

    let old_slots: Vec<String> = old.iter().map(|k| slot(&cluster, k)).collect();
    assert!(
        old_slots.iter().any(|s| *s != old_slots[0]),
        "the old scheme's keys happen to share a slot: {old_slots:?}"
    );
    let tagged_slots: Vec<String> = tagged.iter().map(|k| slot(&cluster, k)).collect();
    assert!(
        tagged_slots.iter().all(|s| *s == tagged_slots[0]),
        "{tagged_slots:?}"
    );

    // redis-cli prints a server error on stdout with exit status 0 in -c mode, so the
    // reply text is what tells.
    let refused = cluster
        .cli(&["EVAL", THREE_KEYS, "3", &old[0], &old[1], &old[2]])
        .unwrap_or_default();
    assert!(refused.contains("CROSSSLOT"), "{refused}");
    let ran = cluster
        .cli(&["EVAL", THREE_KEYS, "3", &tagged[0], &tagged[1], &tagged[2]])
        .unwrap_or_default();
    assert_eq!(ran.trim(), "ok");

    // Sharded pub/sub exists (Redis 7.0) and takes the channel's tagged name.
    let published = cluster
        .cli(&["SPUBLISH", &tagged[3], "1/0 {}"])
        .unwrap_or_default();
    assert_eq!(published.trim(), "0", "no subscriber yet: {published}");
}
