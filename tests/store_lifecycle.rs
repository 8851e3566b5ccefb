//! A store's life as a user lives it (issue 12, "store lifecycle"): `init` on an existing store,
//! `config set`, shards that go missing or do not match, racing creations, non-regular files,
//! the shard bound, and a disk too small. Each test opens with the bug it pins down.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::cli::{fails, ok};
use common::disk::SmallDisk;
use freqalloc::freq::{
    meta_path, parse_pool, replica_dir, shard_dir, Allocator, ConfigChange, Durability, FreqError,
    InitOutcome, Layout, LayoutError, Options, Routing, StoreConfig, StoreError, MAX_SHARDS,
};

fn course() -> Layout {
    Layout::one_shard_per_range(&parse_pool("10-15,20-25").unwrap()).unwrap()
}

fn config(layout: Layout, durability: Durability, replicas: usize) -> StoreConfig {
    StoreConfig {
        layout,
        strategy: Routing::RoundRobin,
        durability,
        client_limit: None,
        replicas,
        cluster: None,
    }
}

fn quiet() -> Options {
    Options {
        release_on_drop: false,
        ..Options::default()
    }
}

/// A store at `dir` with `client` holding one frequency per shard; returns them.
fn store_with_allocations(dir: &Path, replicas: usize) -> Vec<u64> {
    let layout = if replicas == 2 {
        Layout::split_evenly(&parse_pool("0-99").unwrap(), 2).unwrap()
    } else {
        course()
    };
    assert_eq!(
        Allocator::init(dir, config(layout, Durability::Sync, replicas), false).unwrap(),
        InitOutcome::Created
    );
    let alloc = Allocator::open(dir, quiet()).unwrap();
    let held = vec![
        alloc.allocate("radio").unwrap(),
        alloc.allocate("radio").unwrap(),
    ];
    alloc.stop();
    held
}

fn held_after_reopen(dir: &Path) -> Vec<u64> {
    let alloc = Allocator::open(dir, quiet()).unwrap();
    let mut held = alloc.held_by("radio").unwrap();
    held.sort();
    assert!(alloc.check().unwrap().is_empty());
    alloc.stop();
    held
}

/// Regression: `init --pool P --durability none` on a store with allocations printed "store
/// exists" and switched it to `none`, so every allocation was forgotten and handed out again.
/// Now a setting given to `init` that differs from the stored one is refused, naming
/// `config set`, and the allocation is still held.
#[test]
fn init_never_changes_an_existing_stores_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "10-15,20-25"]);
    let f = ok(&store, &["allocate", "--client", "a"]);
    let before = fs::read(meta_path(&store)).unwrap();
    for args in [
        &["--durability", "none"][..],
        &["--strategy", "hash"],
        &["--limit", "1"],
    ] {
        let mut all = vec!["init", "--pool", "10-15,20-25"];
        all.extend_from_slice(args);
        let err = fails(&store, &all);
        assert!(err.contains("config set"), "{err}");
        assert_eq!(fs::read(meta_path(&store)).unwrap(), before);
    }
    // Options not given keep the stored values: plain `init` is "store exists".
    assert!(ok(&store, &["init", "--pool", "10-15,20-25"]).starts_with("store exists"));
    assert_eq!(fs::read(meta_path(&store)).unwrap(), before);
    assert_eq!(ok(&store, &["held", "--client", "a"]), f);
    let next = ok(&store, &["allocate", "--client", "b"]);
    assert_ne!(next, f);
}

/// Regression: `init --pool P --grow` silently reset strategy, durability and limit to the
/// defaults.
#[test]
fn grow_keeps_strategy_durability_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(
        &store,
        &[
            "init",
            "--pool",
            "10-15,20-25",
            "--strategy",
            "round-robin",
            "--durability",
            "interval:40",
            "--limit",
            "3",
        ],
    );
    let out = ok(&store, &["init", "--pool", "10-15,20-30", "--grow"]);
    assert!(out.starts_with("added 5 frequencies"), "{out}");
    let c = freqalloc::freq::read_config(&store).unwrap().unwrap();
    assert_eq!(c.strategy, Routing::RoundRobin);
    assert_eq!(
        c.durability,
        Durability::Interval(Duration::from_millis(40))
    );
    assert_eq!(c.client_limit, Some(3));
    assert_eq!(c.layout.pool_size(), 17);
    let shown = ok(&store, &["config", "show"]);
    assert!(shown.contains("durability interval:40\n"), "{shown}");
    assert!(shown.contains("limit 3\n"), "{shown}");
}

/// Regression: a failed `init --grow` (the store locked by a running process) had already
/// rewritten `meta.json` before the open that failed.
#[test]
fn a_refused_grow_leaves_meta_json_untouched() {
    let dir = tempfile::tempdir().unwrap();
    Allocator::init(dir.path(), config(course(), Durability::Sync, 1), false).unwrap();
    let before = fs::read(meta_path(dir.path())).unwrap();
    let running = Allocator::open(dir.path(), quiet()).unwrap();
    let grown = Layout::one_shard_per_range(&parse_pool("10-15,20-30").unwrap()).unwrap();
    let err = Allocator::init(dir.path(), config(grown.clone(), Durability::Sync, 1), true);
    assert!(err.is_err(), "{err:?}");
    assert_eq!(fs::read(meta_path(dir.path())).unwrap(), before);
    running.stop();
    drop(running);
    assert_eq!(
        Allocator::init(dir.path(), config(grown, Durability::Sync, 1), true).unwrap(),
        InitOutcome::Grown(5)
    );
}

/// `config set`: the explicit, validated way to change a setting. Leaving `sync` for `none`
/// with allocations held is refused and changes nothing; a store in use elsewhere is refused;
/// everything else is applied and shown.
#[test]
fn config_set_refuses_what_would_lose_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "10-15,20-25"]);
    let f = ok(&store, &["allocate", "--client", "a"]);
    let before = fs::read(meta_path(&store)).unwrap();
    let err = fails(&store, &["config", "set", "durability", "none"]);
    assert!(err.contains("1 frequency is allocated"), "{err}");
    for bad in [
        &["config", "set", "durability", "fast"][..],
        &["config", "set", "strategy", "fastest"],
        &["config", "set", "limit", "x"],
        &["config", "set", "colour", "red"],
        &["config", "set", "replicas", "2"],
    ] {
        fails(&store, bad);
    }
    assert_eq!(fs::read(meta_path(&store)).unwrap(), before);
    assert_eq!(ok(&store, &["held", "--client", "a"]), f);

    ok(&store, &["config", "set", "strategy", "hash"]);
    ok(&store, &["config", "set", "limit", "2"]);
    ok(&store, &["config", "set", "durability", "interval:25"]);
    let c = freqalloc::freq::read_config(&store).unwrap().unwrap();
    assert_eq!(
        (c.strategy, c.durability, c.client_limit),
        (
            Routing::Hash,
            Durability::Interval(Duration::from_millis(25)),
            Some(2)
        )
    );
    assert_eq!(ok(&store, &["held", "--client", "a"]), f);
    // A store open elsewhere is refused, unchanged (a `none` store holds no disk lock).
    let running = Allocator::open(&store, quiet()).unwrap();
    let before = fs::read(meta_path(&store)).unwrap();
    assert!(Allocator::set_config(&store, ConfigChange::Strategy(Routing::MostFree)).is_err());
    assert_eq!(fs::read(meta_path(&store)).unwrap(), before);
    running.stop();
    drop(running);
    ok(&store, &["config", "set", "limit", "none"]);
    ok(&store, &["deallocate", f.trim(), "--client", "a"]);
    // With nothing allocated, `none` loses nothing.
    ok(&store, &["config", "set", "durability", "none"]);
    assert_eq!(
        freqalloc::freq::read_config(&store)
            .unwrap()
            .unwrap()
            .durability,
        Durability::None
    );
}

/// Regression: a deleted `shard-N` directory was silently recreated empty (and `check` said
/// "consistent"), so its allocations were handed out again.
#[test]
fn a_deleted_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let held = store_with_allocations(dir.path(), 1);
    assert_eq!(held.len(), 2);
    fs::rename(shard_dir(dir.path(), 1), dir.path().join("away")).unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMissing { shard: 1, .. })) => {}
        Err(e) => panic!("expected ShardMissing, got {e}"),
        Ok(_) => panic!("a store with a deleted shard opened"),
    }
    let err = fails(dir.path(), &["check"]);
    assert!(err.contains("shard-1 is missing"), "{err}");
    // Putting it back is the fix.
    fs::rename(dir.path().join("away"), shard_dir(dir.path(), 1)).unwrap();
    let mut want = held.clone();
    want.sort();
    assert_eq!(held_after_reopen(dir.path()), want);
}

/// Regression: after `meta.json` was lost, `init` adopted `shard-0` and ignored `shard-1`, whose
/// allocations were then handed out again.
#[test]
fn init_refuses_shard_data_without_meta_json() {
    let dir = tempfile::tempdir().unwrap();
    store_with_allocations(dir.path(), 1);
    fs::remove_file(meta_path(dir.path())).unwrap();
    let one = Layout::one_shard_per_range(&parse_pool("10-15").unwrap()).unwrap();
    match Allocator::init(dir.path(), config(one, Durability::Sync, 1), false) {
        Err(FreqError::Store(StoreError::StrayShards { found, .. })) => {
            assert_eq!(
                found,
                vec![shard_dir(dir.path(), 0), shard_dir(dir.path(), 1)]
            );
        }
        other => panic!("expected StrayShards, got {other:?}"),
    }
    assert!(!meta_path(dir.path()).exists());
    let err = fails(dir.path(), &["init", "--pool", "10-15,20-25"]);
    assert!(err.contains("no meta.json"), "{err}");
}

/// Regression: a hand-edited `replicas: 2` opened a single-replica store as a fresh pair with
/// no allocations; a `meta.json` with fewer shards, or another store's shard, opened too.
#[test]
fn a_configuration_that_does_not_match_the_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_allocations(dir.path(), 1);
    let meta = fs::read_to_string(meta_path(dir.path())).unwrap();
    assert!(meta.contains("\"replicas\": 1"), "{meta}");
    fs::write(
        meta_path(dir.path()),
        meta.replace("\"replicas\": 1", "\"replicas\": 2"),
    )
    .unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMissing {
            replica: Some(_), ..
        })) => {}
        Err(e) => panic!("expected ShardMissing, got {e}"),
        Ok(_) => panic!("hand-edited replicas opened"),
    }
    assert!(!replica_dir(dir.path(), 0, 0).exists());
    fs::write(meta_path(dir.path()), &meta).unwrap();
    assert_eq!(held_after_reopen(dir.path()).len(), 2);

    // A layout edited to move frequencies between shards.
    let swapped = meta
        .replace("\"first\": 10", "\"first\": 9910")
        .replace("\"first\": 20", "\"first\": 10")
        .replace("\"first\": 9910", "\"first\": 20")
        .replace("\"last\": 15", "\"last\": 9915")
        .replace("\"last\": 25", "\"last\": 15")
        .replace("\"last\": 9915", "\"last\": 25");
    assert_ne!(swapped, meta);
    fs::write(meta_path(dir.path()), &swapped).unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMismatch { reason, .. })) => {
            assert!(reason.contains("10-15"), "{reason}")
        }
        Err(e) => panic!("expected ShardMismatch, got {e}"),
        Ok(_) => panic!("a layout with moved frequencies opened"),
    }
    fs::write(meta_path(dir.path()), &meta).unwrap();

    // Another store's shard in place of ours.
    let other = tempfile::tempdir().unwrap();
    store_with_allocations(other.path(), 1);
    fs::remove_dir_all(shard_dir(dir.path(), 1)).unwrap();
    fs::rename(shard_dir(other.path(), 1), shard_dir(dir.path(), 1)).unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMismatch { reason, .. })) => {
            assert!(reason.contains("another store"), "{reason}")
        }
        Err(e) => panic!("expected ShardMismatch, got {e}"),
        Ok(_) => panic!("another store's shard opened"),
    }
}

/// A store written before identity records (no `store_id`, no records) gets them at its first
/// open, unless a shard is already missing.
#[test]
fn a_store_without_identity_records_is_adopted_unless_a_shard_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = store_with_allocations(dir.path(), 1);
    held.sort();
    let strip = |dir: &Path| {
        let text = fs::read_to_string(meta_path(dir)).unwrap();
        let mut meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        meta.as_object_mut().unwrap().remove("store_id").unwrap();
        let legacy = serde_json::to_string_pretty(&meta).unwrap();
        fs::write(meta_path(dir), legacy).unwrap();
        for i in 0..2 {
            for e in fs::read_dir(shard_dir(dir, i)).unwrap().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("freqalloc-shard-")
                {
                    fs::remove_file(e.path()).unwrap();
                }
            }
        }
    };
    strip(dir.path());
    assert!(!fs::read_to_string(meta_path(dir.path()))
        .unwrap()
        .contains("store_id"));
    fs::rename(shard_dir(dir.path(), 0), dir.path().join("away")).unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMissing { shard: 0, .. })) => {}
        Err(e) => panic!("expected ShardMissing, got {e}"),
        Ok(_) => panic!("a legacy store with a deleted shard opened"),
    }
    fs::rename(dir.path().join("away"), shard_dir(dir.path(), 0)).unwrap();
    assert_eq!(held_after_reopen(dir.path()), held);
    assert!(fs::read_to_string(meta_path(dir.path()))
        .unwrap()
        .contains("store_id"));
    // Adopted: from now on a deleted shard is refused like any other store's.
    fs::remove_dir_all(shard_dir(dir.path(), 1)).unwrap();
    assert!(Allocator::open(dir.path(), quiet()).is_err());
}

/// With two replicas, one replica's lost directory is rebuilt from its partner (nothing lost);
/// both lost is refused like a single shard's.
#[test]
fn one_lost_replica_is_rebuilt_both_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = store_with_allocations(dir.path(), 2);
    held.sort();
    fs::remove_dir_all(replica_dir(dir.path(), 0, 1)).unwrap();
    assert_eq!(held_after_reopen(dir.path()), held);
    assert!(replica_dir(dir.path(), 0, 1).is_dir());
    // The rebuilt replica holds the allocations too: lose the other one now.
    fs::remove_dir_all(replica_dir(dir.path(), 0, 0)).unwrap();
    assert_eq!(held_after_reopen(dir.path()), held);
    fs::remove_dir_all(shard_dir(dir.path(), 1)).unwrap();
    match Allocator::open(dir.path(), quiet()) {
        Err(FreqError::Store(StoreError::ShardMissing { shard: 1, .. })) => {}
        Err(e) => panic!("expected ShardMissing, got {e}"),
        Ok(_) => panic!("a store with both replicas of a shard deleted opened"),
    }
}

/// Regression: two `init`s racing on a fresh directory could each print "created store" for a
/// pool that was not the one on disk, and both wrote `meta.json.tmp` at once. Now exactly one
/// creates; every other compares with what the winner wrote; the store opens with the winner's
/// pool and no temporary file is left.
#[test]
fn racing_inits_create_one_store() {
    let rounds: usize = std::env::var("FREQALLOC_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let store: PathBuf = dir.path().join("s");
        let racers = 4;
        let barrier = Arc::new(Barrier::new(racers));
        let results: Vec<(String, Result<InitOutcome, FreqError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..racers)
                .map(|i| {
                    let barrier = Arc::clone(&barrier);
                    let store = store.clone();
                    s.spawn(move || {
                        // Racers 0 and 1 ask for the same pool, 2 and 3 for others.
                        let pool = match i {
                            0 | 1 => "10-15,20-25".to_string(),
                            n => format!("{}-{}", n * 100, n * 100 + 9),
                        };
                        let layout =
                            Layout::one_shard_per_range(&parse_pool(&pool).unwrap()).unwrap();
                        barrier.wait();
                        let r = Allocator::init(&store, config(layout, Durability::Sync, 1), false);
                        (pool, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&String> = results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(InitOutcome::Created)))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let on_disk = freqalloc::freq::read_config(&store).unwrap().unwrap();
        assert_eq!(&on_disk.layout.pool_string(), winners[0]);
        for (pool, r) in &results {
            match r {
                Ok(InitOutcome::Created) => {}
                Ok(InitOutcome::Existing) => assert_eq!(pool, winners[0]),
                Err(FreqError::Store(StoreError::ConfigMismatch { existing, .. })) => {
                    assert!(existing.contains(winners[0].as_str()), "{existing}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let leftovers: Vec<_> = fs::read_dir(&store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let alloc = Allocator::open(&store, quiet()).unwrap();
        assert_eq!(&alloc.config().layout.pool_string(), winners[0]);
        alloc.stop();
    }
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success());
}

/// Runs `f` on a thread and waits for it at most 20 s: a read that hangs fails the test instead
/// of hanging it (the deadline only bounds a failure).
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("hung on a non-regular file")
}

/// Regression: a FIFO in place of `meta.json` or of a disk table's state file hung every
/// command forever. Now it is refused with an error naming it.
#[test]
fn a_fifo_in_place_of_a_store_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    store_with_allocations(&store, 1);
    let meta = meta_path(&store);
    fs::rename(&meta, dir.path().join("meta.saved")).unwrap();
    mkfifo(&meta);
    let s = store.clone();
    match within_deadline(move || Allocator::open(&s, quiet()).map(|a| a.stop())) {
        Err(FreqError::Store(StoreError::NotRegular { path })) => assert_eq!(path, meta),
        other => panic!("expected NotRegular, got {other:?}"),
    }
    let s = store.clone();
    let err = within_deadline(move || fails(&s, &["init", "--pool", "10-15,20-25"]));
    assert!(err.contains("not a regular file"), "{err}");
    fs::remove_file(&meta).unwrap();
    fs::rename(dir.path().join("meta.saved"), &meta).unwrap();

    let state = shard_dir(&store, 1).join("freqalloc-dets.state");
    assert!(state.is_file());
    fs::rename(&state, dir.path().join("state.saved")).unwrap();
    mkfifo(&state);
    let s = store.clone();
    match within_deadline(move || Allocator::open(&s, quiet()).map(|a| a.stop())) {
        Err(FreqError::Store(StoreError::NotRegular { path })) => assert_eq!(path, state),
        other => panic!("expected NotRegular, got {other:?}"),
    }
    fs::remove_file(&state).unwrap();
    fs::rename(dir.path().join("state.saved"), &state).unwrap();
    assert_eq!(held_after_reopen(&store).len(), 2);
}

/// Regression: `--shards` had no bound (10,000 shards took 2 GB, then EMFILE, and left a store
/// that never opened) and 2,000 listed ranges made 2,000 shards. Now more than `MAX_SHARDS` is
/// refused before anything is written, and many ranges make a few shards.
#[test]
fn shards_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let err = fails(&store, &["init", "--pool", "0-99999", "--shards", "10000"]);
    assert!(
        err.contains(&format!("the {MAX_SHARDS} a store may have")),
        "{err}"
    );
    assert!(!store.exists());
    let many: Vec<String> = (0..2000)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 4))
        .collect();
    let out = ok(&store, &["init", "--pool", &many.join(",")]);
    assert!(out.contains("(10000 frequencies) in 8 shards"), "{out}");
    assert!(matches!(
        Layout::split_evenly(&parse_pool("0-999").unwrap(), MAX_SHARDS + 1),
        Err(LayoutError::ShardLimit { .. })
    ));
    let max = dir.path().join("max");
    let shards = MAX_SHARDS.to_string();
    let out = ok(&max, &["init", "--pool", "0-99999", "--shards", &shards]);
    assert!(out.contains(&format!("in {MAX_SHARDS} shards")), "{out}");
    ok(&max, &["allocate", "--client", "a"]);
}

/// Regression: `init` on a disk too small to hold the store printed "created store" (and the
/// first allocation failed); a store that failed to open could only be removed with `rm -rf`.
/// Now `init` says the disk is full, leaves no store behind, and the same `init` succeeds once
/// there is room.
#[test]
fn init_on_a_disk_too_small_says_so_and_can_be_repeated() {
    let Some(disk) = SmallDisk::mount("128k") else {
        return;
    };
    let store = disk.path().join("s");
    let err = fails(&store, &["init", "--pool", "0-999", "--shards", "4"]);
    assert!(err.contains("disk full"), "{err}");
    assert!(!meta_path(&store).exists());
    let left: Vec<_> = fs::read_dir(&store)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    disk.resize("16m");
    let out = ok(&store, &["init", "--pool", "0-999", "--shards", "4"]);
    assert!(out.starts_with("created store"), "{out}");
    ok(&store, &["allocate", "--client", "a"]);
    assert!(ok(&store, &["check"]).starts_with("consistent"));
}
