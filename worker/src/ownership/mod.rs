//! Owned partitions: each (event type, partition) consumer is pulled by exactly one replica
//! at a time (`docs/decisions.md`, "Partitions are owned").
//!
//! State lives in the KV bucket `bridge_partitions`: `member.<id>` heartbeats ([`members`])
//! and `owner.<type>.<partition>` records naming the replica that holds a partition. Every
//! replica watches the bucket, computes who *should* own each partition ([`assign`]) and acts
//! on its own share only:
//!
//! - **claim** a partition it should own whose record is absent or names a member that is
//!   gone (compare-and-set on the record's revision, so two claimants cannot both win), then
//!   start its runner, which recreates the consumer so the previous owner's unacknowledged
//!   events come first, in stream order;
//! - **release** a partition that should now be another's: stop pulling, finish what is in
//!   hand (the rest is given back), then delete the record, which lets the new owner claim it;
//! - **stop at once** a partition whose record names somebody else (this replica was
//!   presumed gone, e.g. after a long pause).
//!
//! Liveness is the member heartbeat, so owner records need no renewal.

pub mod assign;
pub mod members;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::assign::Slot;
use self::members::{Announcement, Members};
use crate::telemetry;
use shared::contract::EventKind;

/// Heartbeats between two full reads of the partition table (about 5 minutes by default: a
/// read is hundreds of KV gets, a burst the rest of the traffic would feel).
const SNAPSHOT_EVERY_TICKS: u64 = 200;

/// A running partition, as its starter returns it.
pub struct Running {
    /// Stop pulling, finish what is in hand, give back the rest, then end.
    pub stop: CancellationToken,
    /// End now: give everything back (the partition belongs to someone else, or shutdown).
    pub lost: CancellationToken,
    pub task: JoinHandle<()>,
}

enum Local {
    Running(Running),
    Releasing(Running),
}

/// Settings of the ownership loop.
#[derive(Clone, Debug)]
pub struct OwnershipConfig {
    /// This replica's member id (unique per process).
    pub member_id: String,
    pub types: Vec<EventKind>,
    pub partitions: u32,
    /// `MEMBER_TIMEOUT`: a member not heard from for this long is gone.
    pub member_timeout: Duration,
    /// How long a graceful shutdown waits for partitions to drain before giving work back.
    pub shutdown_timeout: Duration,
}

/// Claims, runs and releases this replica's partitions until `shutdown`.
pub struct Ownership<F> {
    kv: kv::Store,
    config: OwnershipConfig,
    start: F,
    members: Members,
    /// Owner records as last seen: member id and revision.
    owners: HashMap<Slot, (String, u64)>,
    local: HashMap<Slot, Local>,
}

impl<F: Fn(Slot) -> Running> Ownership<F> {
    pub fn new(kv: kv::Store, config: OwnershipConfig, start: F) -> Self {
        Self {
            kv,
            config,
            start,
            members: Members::default(),
            owners: HashMap::new(),
            local: HashMap::new(),
        }
    }

    fn my_slots(&self) -> Vec<Slot> {
        let mut slots = Vec::new();
        for &kind in &self.config.types {
            for partition in 0..self.config.partitions {
                slots.push(Slot { kind, partition });
            }
        }
        slots
    }

    /// Reads the whole table once, so the first decisions see every member and owner (a
    /// replica that acted on a partial view would take partitions from live owners).
    async fn load_snapshot(&mut self) -> Result<(), async_nats::Error> {
        let mut keys = self.kv.keys().await?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key?);
        }
        let present: std::collections::HashSet<Slot> = names
            .iter()
            .filter_map(|k| k.strip_prefix("owner.").and_then(Slot::parse))
            .collect();
        self.owners.retain(|slot, _| present.contains(slot));
        let kv = self.kv.clone();
        let mut entries = futures::stream::iter(names)
            .map(|key| {
                let kv = kv.clone();
                async move { kv.entry(key).await }
            })
            .buffer_unordered(16);
        while let Some(entry) = entries.next().await {
            if let Some(entry) = entry? {
                self.apply(entry);
            }
        }
        Ok(())
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.load_snapshot().await {
            tracing::warn!(error = %e, "cannot read the partition table yet");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let heartbeat = (self.config.member_timeout / 4).max(Duration::from_millis(100));
        // Announce, then let one heartbeat pass before claiming: replicas started together see
        // each other first, instead of one claiming everything and handing most of it back.
        self.announce().await;
        let claim_from = tokio::time::Instant::now() + heartbeat;
        let mut ticker = tokio::time::interval_at(claim_from, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = None;
        let mut ticks: u64 = 0;
        loop {
            if watch.is_none() {
                match self.kv.watch_with_history(">").await {
                    // A fresh watch replays the current state over what is known.
                    Ok(w) => watch = Some(w),
                    Err(e) => tracing::warn!(error = %e, "cannot watch partition owners yet"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.announce().await;
                    ticks += 1;
                    // A safety net under the watch: re-read the table now and then, so a watch
                    // that silently stopped cannot leave this view stale.
                    if ticks % SNAPSHOT_EVERY_TICKS == 0 {
                        if let Err(e) = self.load_snapshot().await {
                            tracing::warn!(error = %e, "partition table not re-read");
                        }
                    }
                    self.reconcile().await;
                }
                entry = async { watch.as_mut().expect("checked").next().await }, if watch.is_some() => {
                    match entry {
                        Some(Ok(entry)) => {
                            self.apply(entry);
                            // Take in everything already delivered before acting on it.
                            while let Some(Some(Ok(entry))) = watch.as_mut().expect("checked").next().now_or_never() {
                                self.apply(entry);
                            }
                            if tokio::time::Instant::now() >= claim_from {
                                self.reconcile().await;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "partition watch failed; watching again");
                            watch = None;
                        }
                        None => watch = None,
                    }
                }
            }
            self.reap_releases().await;
        }
        self.stop_all().await;
    }

    async fn announce(&self) {
        let announcement = Announcement {
            types: self
                .config
                .types
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
        };
        let key = format!("member.{}", self.config.member_id);
        if let Err(e) = shared::kv::put(&self.kv, &key, &announcement).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
    }

    fn apply(&mut self, entry: kv::Entry) {
        let deleted = matches!(entry.operation, Operation::Delete | Operation::Purge);
        if let Some(id) = entry.key.strip_prefix("member.") {
            if deleted {
                self.members.forget(id);
            } else {
                let announcement: Announcement =
                    serde_json::from_slice(&entry.value).unwrap_or_default();
                let age = (time::OffsetDateTime::now_utc() - entry.created)
                    .max(time::Duration::ZERO)
                    .unsigned_abs();
                // Live updates are "now"; only the replayed start-up state carries an age.
                let age = if entry.seen_current {
                    Duration::ZERO
                } else {
                    age
                };
                self.members.seen(id, &announcement, age, entry.revision);
            }
        } else if let Some(slot) = entry.key.strip_prefix("owner.").and_then(Slot::parse) {
            // The watch may deliver a change older than one this replica already applied
            // (its own claim, or a snapshot read): keep the newest.
            if self
                .owners
                .get(&slot)
                .is_some_and(|(_, known)| *known > entry.revision)
            {
                return;
            }
            if deleted {
                self.owners.remove(&slot);
            } else {
                let owner = String::from_utf8_lossy(&entry.value).into_owned();
                self.owners.insert(slot, (owner, entry.revision));
            }
        }
    }

    /// Whether a member not heard from for `MEMBER_TIMEOUT` is really gone: its key, read
    /// from the bucket's leader, is unchanged since last seen (or deleted). A key written since
    /// means the watch stalled (it does while the bucket elects a leader): the member is alive,
    /// and taking its partitions would only make the two replicas trade them back and forth.
    /// When the bucket cannot be read, nothing can be claimed anyway: ask again later.
    async fn confirm_gone(&mut self, id: &str) -> bool {
        let key = format!("member.{id}");
        match shared::kv::read_from_leader::<Announcement>(&self.kv, &key).await {
            Ok(Some(current))
                if self
                    .members
                    .revision(id)
                    .is_none_or(|seen| current.revision > seen) =>
            {
                tracing::info!(
                    member = id,
                    "a member's heartbeat arrived late; still alive"
                );
                self.members
                    .seen(id, &current.value, Duration::ZERO, current.revision);
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(member = id, error = %e, "cannot tell whether a silent member is gone; asking again later");
                self.members.vouch(id);
                false
            }
        }
    }

    async fn reconcile(&mut self) {
        let me = self.config.member_id.clone();
        let timeout = self.config.member_timeout;
        for gone in self.members.gone(timeout) {
            if gone != me && self.confirm_gone(&gone).await {
                // Tidy: a crashed replica's heartbeat key would otherwise stay forever.
                self.members.forget(&gone);
                let _ = self.kv.delete(format!("member.{gone}")).await;
            }
        }
        let mut shares: HashMap<EventKind, Vec<bool>> = HashMap::new();
        for &kind in &self.config.types {
            let mut candidates = self.members.live_for(kind, timeout);
            if !candidates.contains(&me.as_str()) {
                candidates.push(&me);
            }
            candidates.sort_unstable();
            let mine = assign::balanced(kind, self.config.partitions, &candidates)
                .into_iter()
                .map(|owner| owner == Some(me.as_str()))
                .collect();
            shares.insert(kind, mine);
        }
        for slot in self.my_slots() {
            let should_own = shares[&slot.kind][slot.partition as usize];
            let record = self.owners.get(&slot).cloned();
            // A runner that ended by itself (it cannot, short of a bug) is started afresh.
            if matches!(self.local.get(&slot), Some(Local::Running(r)) if r.task.is_finished()) {
                tracing::error!(
                    partition = slot.partition,
                    kind = slot.kind.as_str(),
                    "partition runner ended unexpectedly; restarting it"
                );
                self.local.remove(&slot);
            }
            match self.local.get(&slot) {
                Some(Local::Running(_)) => match &record {
                    Some((owner, _)) if *owner != me => {
                        tracing::warn!(partition = slot.partition, kind = slot.kind.as_str(), new_owner = %owner, "partition taken over; stopping at once");
                        if let Some(Local::Running(running)) = self.local.remove(&slot) {
                            running.lost.cancel();
                        }
                    }
                    // The record vanished (the bucket was recreated): write it again.
                    None => {
                        let ours = self.claim(slot, None).await
                            || self
                                .owners
                                .get(&slot)
                                .is_some_and(|(owner, _)| *owner == me);
                        if !ours {
                            if let Some(Local::Running(running)) = self.local.remove(&slot) {
                                running.lost.cancel();
                            }
                        }
                    }
                    Some(_) if !should_own => {
                        tracing::info!(
                            partition = slot.partition,
                            kind = slot.kind.as_str(),
                            "partition moves to another replica; releasing"
                        );
                        if let Some(Local::Running(running)) = self.local.remove(&slot) {
                            running.stop.cancel();
                            self.local.insert(slot, Local::Releasing(running));
                        }
                    }
                    Some(_) => {}
                },
                Some(Local::Releasing(_)) => {}
                // A record of ours for a partition we neither run nor should own (a release
                // whose delete failed): release it now.
                None if !should_own && record.as_ref().is_some_and(|(owner, _)| *owner == me) => {
                    self.give_up_record(slot).await;
                }
                None if should_own => {
                    let free = match &record {
                        None => true,
                        Some((owner, _)) => *owner == me || !self.members.is_live(owner, timeout),
                    };
                    if free && self.claim(slot, record.map(|(_, rev)| rev)).await {
                        tracing::info!(
                            partition = slot.partition,
                            kind = slot.kind.as_str(),
                            "partition claimed"
                        );
                        let running = (self.start)(slot);
                        self.local.insert(slot, Local::Running(running));
                    }
                }
                None => {}
            }
        }
        let owned = self
            .local
            .values()
            .filter(|l| matches!(l, Local::Running(_)))
            .count();
        tracing::debug!(
            owned,
            live = self.members.len_live(timeout),
            records = self.owners.len(),
            "partitions reconciled"
        );
        metrics::gauge!(telemetry::OWNED_PARTITIONS).set(owned as f64);
        metrics::gauge!(telemetry::LIVE_MEMBERS).set(self.members.len_live(timeout) as f64);
    }

    /// Writes this replica into the owner record, if it is still at `revision`.
    async fn claim(&mut self, slot: Slot, revision: Option<u64>) -> bool {
        let me = self.config.member_id.clone();
        let value: bytes::Bytes = me.clone().into_bytes().into();
        let written = shared::kv::write_bytes(&self.kv, &slot.owner_key(), value, revision)
            .await
            .ok();
        match written {
            Some(rev) => {
                self.owners.insert(slot, (me, rev));
                true
            }
            None => {
                // Lost a race (or the view lags): learn the record as it is now.
                if let Ok(Some(entry)) = self.kv.entry(slot.owner_key()).await {
                    self.apply(entry);
                }
                false
            }
        }
    }

    /// Deletes the records of partitions whose release finished.
    async fn reap_releases(&mut self) {
        let finished: Vec<Slot> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l, Local::Releasing(r) if r.task.is_finished()))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in finished {
            self.local.remove(&slot);
            self.give_up_record(slot).await;
        }
    }

    /// Deletes this replica's record of `slot`. When the delete fails the record stays in the
    /// view, still naming this replica, and the next reconcile deletes it again: a record left
    /// behind would keep the partition from everyone.
    async fn give_up_record(&mut self, slot: Slot) {
        if let Some((owner, rev)) = self.owners.get(&slot).cloned() {
            if owner == self.config.member_id {
                match shared::kv::delete_at(&self.kv, &slot.owner_key(), rev).await {
                    Ok(()) => {
                        self.owners.remove(&slot);
                    }
                    Err(e) => {
                        tracing::warn!(partition = slot.partition, kind = slot.kind.as_str(), error = %e, "owner record not released yet; retrying");
                        if let Ok(Some(entry)) = self.kv.entry(slot.owner_key()).await {
                            self.apply(entry);
                        }
                    }
                }
            }
        }
    }

    /// Graceful shutdown: drain every partition (bounded), give back what is left, release
    /// the records and the membership so the others take over without waiting for a timeout.
    async fn stop_all(mut self) {
        let slots: Vec<Slot> = self.local.keys().copied().collect();
        let mut tasks = Vec::new();
        for slot in &slots {
            if let Some(Local::Running(r) | Local::Releasing(r)) = self.local.remove(slot) {
                r.stop.cancel();
                tasks.push((r.lost, r.task));
            }
        }
        let drained = tokio::time::timeout(
            self.config.shutdown_timeout,
            futures::future::join_all(tasks.iter_mut().map(|(_, task)| task)),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("partitions did not drain in time; giving their events back");
            for (lost, _) in &tasks {
                lost.cancel();
            }
            let unfinished = tasks
                .iter_mut()
                .filter(|(_, task)| !task.is_finished())
                .map(|(_, task)| task);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                futures::future::join_all(unfinished),
            )
            .await;
        }
        for slot in slots {
            self.give_up_record(slot).await;
        }
        let _ = self
            .kv
            .delete(format!("member.{}", self.config.member_id))
            .await;
        tracing::info!("partitions released");
    }
}
