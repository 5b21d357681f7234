//! The user → home-cluster directory (sans-IO).
//!
//! Each cluster is the single writer of its own users: its *origin log* is a sequence of
//! changes numbered `1, 2, …` within an *incarnation* (a random id drawn at start, so a
//! restarted, reset or restored cluster is recognised by its peers). Peers keep a *replica* of
//! every other origin, fed by a snapshot and then by deltas "since N", and checked by a
//! per-origin digest (entry count and an order-independent hash of `(user, epoch)`).
//!
//! A user's home is the claim with the highest ownership epoch; equal epochs from two clusters
//! are a *conflict*: reported, and routed deterministically to the cluster whose name sorts
//! first, never to both.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// A directory change in an origin log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The origin hosts `user` with ownership epoch `epoch` (added or epoch changed).
    Put { user: String, epoch: u64 },
    /// The origin no longer hosts `user`.
    Del { user: String },
}

impl Change {
    /// The user the change is about.
    pub fn user(&self) -> &str {
        match self {
            Change::Put { user, .. } | Change::Del { user } => user,
        }
    }
}

/// Entry count and XOR of per-entry hashes: compared per origin to find drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digest {
    pub count: u64,
    pub hash: u64,
}

impl Digest {
    fn toggle(&mut self, user: &str, epoch: u64, add: bool) {
        self.hash ^= entry_hash(user, epoch);
        if add {
            self.count += 1;
        } else {
            self.count = self.count.saturating_sub(1);
        }
    }

    /// `count:hash` (hash in hex), as carried on the wire.
    pub fn render(&self) -> String {
        format!("{}:{:016x}", self.count, self.hash)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (c, h) = s.split_once(':')?;
        Some(Self {
            count: c.parse().ok()?,
            hash: u64::from_str_radix(h, 16).ok()?,
        })
    }

    /// The digest of a whole entry set.
    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut d = Self::default();
        for (u, e) in entries {
            d.toggle(u, e, true);
        }
        d
    }
}

/// FNV-1a 64 over `user`, a zero byte and the epoch (stable across builds and versions).
pub fn entry_hash(user: &str, epoch: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(&epoch.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix so that XOR of similar keys does not cancel in low bits.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The entries of one origin, with their digest. A snapshot is built into one of these as its
/// `<entries>` arrive (see [`Directory::apply_snapshot_entries`]).
#[derive(Debug, Clone, Default)]
pub struct Entries {
    users: HashMap<String, u64>,
    digest: Digest,
}

impl Entries {
    /// Adds a received entry (a user listed twice keeps the last epoch).
    pub fn insert(&mut self, user: String, epoch: u64) {
        match self.users.get(&user) {
            Some(_) => {
                self.put(&user, epoch);
            }
            None => {
                self.digest.toggle(&user, epoch, true);
                self.users.insert(user, epoch);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn put(&mut self, user: &str, epoch: u64) -> bool {
        match self.users.get_mut(user) {
            Some(e) if *e == epoch => false,
            Some(e) => {
                self.digest.toggle(user, *e, false);
                *e = epoch;
                self.digest.toggle(user, epoch, true);
                true
            }
            None => {
                self.users.insert(user.to_owned(), epoch);
                self.digest.toggle(user, epoch, true);
                true
            }
        }
    }

    fn del(&mut self, user: &str) -> bool {
        match self.users.remove(user) {
            Some(e) => {
                self.digest.toggle(user, e, false);
                true
            }
            None => false,
        }
    }

    fn apply(&mut self, c: &Change) {
        match c {
            Change::Put { user, epoch } => {
                self.put(user, *epoch);
            }
            Change::Del { user } => {
                self.del(user);
            }
        }
    }
}

/// A replica of another cluster's origin log.
#[derive(Debug, Clone, Default)]
struct Replica {
    incarnation: u64,
    seq: u64,
    entries: Entries,
}

/// Why deltas could not be applied: the receiver must ask for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("origin {origin}: incarnation {got:x} where {have:x} was expected")]
    Incarnation { origin: String, have: u64, got: u64 },
    #[error("origin {origin}: deltas start at {first}, the replica is at {have}")]
    Gap {
        origin: String,
        have: u64,
        first: u64,
    },
    #[error("origin {origin}: snapshot digest {got} does not match its content {computed}")]
    SnapshotDigest {
        origin: String,
        got: String,
        computed: String,
    },
    #[error("origin {origin} is this cluster: refusing to overwrite it from a peer")]
    OwnOrigin { origin: String },
}

/// What a subscriber that has `since` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catchup {
    /// The changes `since + 1 ..= head`, in order (possibly empty).
    Deltas(Vec<Change>),
    /// The log does not reach back far enough, or another incarnation: send a snapshot.
    Snapshot,
}

/// Where a user lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub cluster: String,
    pub epoch: u64,
    /// Another cluster claims the user with the same epoch.
    pub conflict: bool,
}

/// A user claimed by two or more clusters with the same (highest) epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub user: String,
    pub epoch: u64,
    /// Every claimant at that epoch, sorted; the first one is where stanzas go.
    pub clusters: Vec<String>,
}

/// The whole directory as one cluster sees it.
#[derive(Debug, Clone)]
pub struct Directory {
    me: String,
    incarnation: u64,
    seq: u64,
    own: Entries,
    /// The last changes of the own log (seq of the front is `seq - log.len() + 1`).
    log: VecDeque<Change>,
    log_cap: usize,
    replicas: BTreeMap<String, Replica>,
    /// Users claimed by two or more clusters at their highest epoch, kept up to date by every
    /// change (only users claimed more than once are looked at), so that listing conflicts
    /// never scans the whole directory under its lock.
    contested: BTreeMap<String, Conflict>,
}

impl Directory {
    /// An empty directory for cluster `me` in incarnation `incarnation`, keeping the last
    /// `log_cap` changes for subscribers that fall behind (older ones get a snapshot).
    pub fn new(me: &str, incarnation: u64, log_cap: usize) -> Self {
        Self {
            me: me.to_owned(),
            incarnation,
            seq: 0,
            own: Entries::default(),
            log: VecDeque::new(),
            log_cap: log_cap.max(1),
            replicas: BTreeMap::new(),
            contested: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The head of the own log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn own_digest(&self) -> Digest {
        self.own.digest
    }

    pub fn own_users(&self) -> usize {
        self.own.users.len()
    }

    fn push(&mut self, c: Change) {
        self.seq += 1;
        self.log.push_back(c);
        while self.log.len() > self.log_cap {
            self.log.pop_front();
        }
    }

    /// Replaces the own user set with `desired` (user → epoch), appending one change per
    /// difference (sorted by user, so the log is deterministic). Returns the number of changes.
    pub fn set_own(&mut self, desired: &HashMap<String, u64>) -> usize {
        let mut changes = Vec::new();
        let mut gone: Vec<&String> = self
            .own
            .users
            .keys()
            .filter(|u| !desired.contains_key(*u))
            .collect();
        gone.sort();
        for u in gone {
            changes.push(Change::Del { user: u.clone() });
        }
        let mut put: Vec<(&String, &u64)> = desired
            .iter()
            .filter(|(u, e)| self.own.users.get(*u) != Some(e))
            .collect();
        put.sort();
        for (u, e) in put {
            changes.push(Change::Put {
                user: u.clone(),
                epoch: *e,
            });
        }
        let n = changes.len();
        for c in changes {
            self.own.apply(&c);
            self.touch(c.user());
            self.push(c);
        }
        n
    }

    /// The changes a subscriber at (`incarnation`, `since`) of the own log needs.
    pub fn catchup(&self, incarnation: Option<u64>, since: u64) -> Catchup {
        let oldest = self.seq + 1 - self.log.len() as u64;
        if incarnation != Some(self.incarnation) || since > self.seq || since + 1 < oldest {
            return Catchup::Snapshot;
        }
        let skip = (since + 1 - oldest) as usize;
        Catchup::Deltas(self.log.iter().skip(skip).cloned().collect())
    }

    /// The own entries (sorted by user) with the seq and digest they correspond to.
    pub fn own_snapshot(&self) -> (u64, Vec<(String, u64)>, Digest) {
        let mut v: Vec<(String, u64)> = self
            .own
            .users
            .iter()
            .map(|(u, e)| (u.clone(), *e))
            .collect();
        v.sort();
        (self.seq, v, self.own.digest)
    }

    /// (incarnation, seq) of the replica of `origin`, if any.
    pub fn replica_position(&self, origin: &str) -> Option<(u64, u64)> {
        self.replicas.get(origin).map(|r| (r.incarnation, r.seq))
    }

    pub fn replica_digest(&self, origin: &str) -> Option<Digest> {
        self.replicas.get(origin).map(|r| r.entries.digest)
    }

    /// Number of users `origin` hosts as far as this directory knows.
    pub fn users_of(&self, origin: &str) -> usize {
        if origin == self.me {
            return self.own.users.len();
        }
        self.replicas
            .get(origin)
            .map_or(0, |r| r.entries.users.len())
    }

    /// Applies consecutive changes `first, first + 1, …` of `origin`'s log.
    pub fn apply_deltas(
        &mut self,
        origin: &str,
        incarnation: u64,
        first: u64,
        changes: &[Change],
    ) -> Result<(), SyncError> {
        if origin == self.me {
            return Err(SyncError::OwnOrigin {
                origin: origin.to_owned(),
            });
        }
        let Some(r) = self.replicas.get_mut(origin) else {
            return Err(SyncError::Gap {
                origin: origin.to_owned(),
                have: 0,
                first,
            });
        };
        if r.incarnation != incarnation {
            return Err(SyncError::Incarnation {
                origin: origin.to_owned(),
                have: r.incarnation,
                got: incarnation,
            });
        }
        // Seqs start at 1; a batch must join the replica and its numbers must not overflow
        // (a buggy or hostile peer may send anything).
        if first == 0
            || first > r.seq.saturating_add(1)
            || first.checked_add(changes.len() as u64).is_none()
        {
            return Err(SyncError::Gap {
                origin: origin.to_owned(),
                have: r.seq,
                first,
            });
        }
        // Changes at or below the replica's seq were applied already (a resent batch).
        let mut applied = Vec::new();
        for (s, c) in (first..).zip(changes) {
            if s > r.seq {
                r.entries.apply(c);
                r.seq = s;
                applied.push(c.user());
            }
        }
        for user in applied {
            self.touch(user);
        }
        Ok(())
    }

    /// Replaces the replica of `origin` with a snapshot at (`incarnation`, `seq`), after
    /// checking it against the digest the origin sent with it.
    pub fn apply_snapshot(
        &mut self,
        origin: &str,
        incarnation: u64,
        seq: u64,
        entries: Vec<(String, u64)>,
        digest: Digest,
    ) -> Result<(), SyncError> {
        let mut e = Entries::default();
        e.users.reserve(entries.len());
        for (u, ep) in entries {
            e.insert(u, ep);
        }
        self.apply_snapshot_entries(origin, incarnation, seq, e, digest)
    }

    /// [`Self::apply_snapshot`] with the entries already built (outside the directory's lock).
    pub fn apply_snapshot_entries(
        &mut self,
        origin: &str,
        incarnation: u64,
        seq: u64,
        mut e: Entries,
        digest: Digest,
    ) -> Result<(), SyncError> {
        if origin == self.me {
            return Err(SyncError::OwnOrigin {
                origin: origin.to_owned(),
            });
        }
        if e.digest != digest {
            return Err(SyncError::SnapshotDigest {
                origin: origin.to_owned(),
                got: digest.render(),
                computed: e.digest.render(),
            });
        }
        e.users.shrink_to_fit();
        let old = self.replicas.insert(
            origin.to_owned(),
            Replica {
                incarnation,
                seq,
                entries: e,
            },
        );
        // Users whose claim by `origin` appeared, changed or went away (say one with a higher
        // epoch, leaving a tie between others); a repair snapshot changes few.
        let empty = HashMap::new();
        let old_users = old.as_ref().map_or(&empty, |r| &r.entries.users);
        let new_users = &self.replicas[origin].entries.users;
        let changed = new_users
            .iter()
            .filter(|(u, e)| old_users.get(*u) != Some(e))
            .map(|(u, _)| u)
            .chain(old_users.keys().filter(|u| !new_users.contains_key(*u)));
        let check: Vec<String> = changed
            .filter(|u| self.contested.contains_key(*u) || self.claimants(u) > 1)
            .cloned()
            .collect();
        for user in check {
            self.recheck(&user);
        }
        Ok(())
    }

    /// Whether the replica of `origin` lists `user`.
    pub fn lists(&self, origin: &str, user: &str) -> bool {
        self.replicas
            .get(origin)
            .is_some_and(|r| r.entries.users.contains_key(user))
    }

    /// Forgets the replica of `origin` (a removed peer).
    pub fn forget(&mut self, origin: &str) {
        let Some(old) = self.replicas.remove(origin) else {
            return;
        };
        for user in old.entries.users.keys() {
            self.touch(user);
        }
    }

    /// How many clusters claim `user` (no allocation).
    fn claimants(&self, user: &str) -> usize {
        usize::from(self.own.users.contains_key(user))
            + self
                .replicas
                .values()
                .filter(|r| r.entries.users.contains_key(user))
                .count()
    }

    /// After a change of `user`'s claims: only a user claimed twice, or in conflict until
    /// now, can be (or stop being) a conflict.
    fn touch(&mut self, user: &str) {
        if self.contested.contains_key(user) || self.claimants(user) > 1 {
            self.recheck(user);
        }
    }

    fn recheck(&mut self, user: &str) {
        match self.resolve(user) {
            Some(h) if h.conflict => {
                let mut clusters: Vec<String> = self
                    .claims(user)
                    .into_iter()
                    .filter(|(_, e)| *e == h.epoch)
                    .map(|(c, _)| c)
                    .collect();
                clusters.sort();
                self.contested.insert(
                    user.to_owned(),
                    Conflict {
                        user: user.to_owned(),
                        epoch: h.epoch,
                        clusters,
                    },
                );
            }
            _ => {
                self.contested.remove(user);
            }
        }
    }

    /// Every (cluster, epoch) claiming `user`, the own cluster included.
    pub fn claims(&self, user: &str) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        if let Some(e) = self.own.users.get(user) {
            v.push((self.me.clone(), *e));
        }
        for (name, r) in &self.replicas {
            if let Some(e) = r.entries.users.get(user) {
                v.push((name.clone(), *e));
            }
        }
        v
    }

    /// The highest epoch any cluster claims `user` with (0 when nobody does).
    pub fn max_epoch(&self, user: &str) -> u64 {
        self.claims(user)
            .into_iter()
            .map(|(_, e)| e)
            .max()
            .unwrap_or(0)
    }

    /// Where `user` (a lowercase bare JID) lives: the highest epoch wins; among equal epochs
    /// the cluster whose name sorts first (and the claim is flagged as a conflict). `None`:
    /// no cluster lists the user.
    pub fn resolve(&self, user: &str) -> Option<Home> {
        let mut best: Option<(&str, u64)> = None;
        let mut conflict = false;
        let own = self.own.users.get(user).map(|e| (self.me.as_str(), *e));
        let others = self
            .replicas
            .iter()
            .filter_map(|(n, r)| r.entries.users.get(user).map(|e| (n.as_str(), *e)));
        for (name, epoch) in own.into_iter().chain(others) {
            best = match best {
                None => Some((name, epoch)),
                Some((_, be)) if epoch > be => {
                    conflict = false;
                    Some((name, epoch))
                }
                Some((bn, be)) if epoch == be => {
                    conflict = true;
                    Some(if name < bn { (name, epoch) } else { (bn, be) })
                }
                keep => keep,
            };
        }
        best.map(|(c, e)| Home {
            cluster: c.to_owned(),
            epoch: e,
            conflict,
        })
    }

    /// Every conflict (sorted by user).
    /// Every conflict, sorted by user.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.contested.values().cloned().collect()
    }

    /// Conflicts that involve `cluster`.
    pub fn conflicts_with(&self, cluster: &str) -> usize {
        self.contested
            .values()
            .filter(|c| c.clusters.iter().any(|n| n == cluster))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(&str, u64)]) -> HashMap<String, u64> {
        list.iter().map(|(u, e)| ((*u).to_owned(), *e)).collect()
    }

    /// A replica of `src`'s own origin, built by snapshot.
    fn replicate(src: &Directory, dst: &mut Directory) {
        let (seq, entries, digest) = src.own_snapshot();
        dst.apply_snapshot(src.me(), src.incarnation(), seq, entries, digest)
            .unwrap();
    }

    #[test]
    fn own_changes_form_a_sequenced_log_and_catchup_returns_them() {
        let mut d = Directory::new("tokyo", 7, 100);
        assert_eq!(d.set_own(&users(&[("a@x", 1), ("b@x", 1)])), 2);
        assert_eq!(d.seq(), 2);
        assert_eq!(d.set_own(&users(&[("b@x", 2), ("c@x", 1)])), 3);
        assert_eq!(d.seq(), 5);
        assert_eq!(
            d.catchup(Some(7), 2),
            Catchup::Deltas(vec![
                Change::Del { user: "a@x".into() },
                Change::Put {
                    user: "b@x".into(),
                    epoch: 2
                },
                Change::Put {
                    user: "c@x".into(),
                    epoch: 1
                },
            ])
        );
        assert_eq!(d.catchup(Some(7), 5), Catchup::Deltas(vec![]));
        // Another incarnation, or a position ahead of the head: snapshot.
        assert_eq!(d.catchup(Some(8), 2), Catchup::Snapshot);
        assert_eq!(d.catchup(None, 0), Catchup::Snapshot);
        assert_eq!(d.catchup(Some(7), 9), Catchup::Snapshot);
        // Unchanged set: no change.
        assert_eq!(d.set_own(&users(&[("b@x", 2), ("c@x", 1)])), 0);
    }

    #[test]
    fn a_subscriber_behind_the_retained_log_gets_a_snapshot() {
        let mut d = Directory::new("tokyo", 1, 3);
        for i in 0..5 {
            d.set_own(&users(&[(&format!("u{i}@x"), 1)]));
        }
        // 9 changes (1 put, then del+put four times); only the last 3 are kept.
        assert_eq!(d.seq(), 9);
        assert_eq!(d.catchup(Some(1), 5), Catchup::Snapshot);
        assert!(matches!(d.catchup(Some(1), 6), Catchup::Deltas(v) if v.len() == 3));
    }

    #[test]
    fn deltas_replicate_and_digests_agree() {
        let mut a = Directory::new("tokyo", 11, 100);
        let mut b = Directory::new("london", 22, 100);
        a.set_own(&users(&[("alice@x", 1), ("bob@x", 1)]));
        replicate(&a, &mut b);
        let head = a.seq();
        a.set_own(&users(&[("alice@x", 1), ("carol@x", 3)]));
        let Catchup::Deltas(ch) = a.catchup(Some(11), head) else {
            panic!("deltas expected")
        };
        b.apply_deltas("tokyo", 11, head + 1, &ch).unwrap();
        assert_eq!(b.replica_position("tokyo"), Some((11, a.seq())));
        assert_eq!(b.replica_digest("tokyo"), Some(a.own_digest()));
        assert_eq!(b.resolve("carol@x").unwrap().cluster, "tokyo");
        assert_eq!(b.resolve("bob@x"), None);
        // A resent batch is harmless; a gap or another incarnation is refused.
        b.apply_deltas("tokyo", 11, head + 1, &ch).unwrap();
        assert_eq!(b.replica_digest("tokyo"), Some(a.own_digest()));
        assert!(matches!(
            b.apply_deltas("tokyo", 11, a.seq() + 2, &ch),
            Err(SyncError::Gap { .. })
        ));
        assert!(matches!(
            b.apply_deltas("tokyo", 12, a.seq() + 1, &ch),
            Err(SyncError::Incarnation { .. })
        ));
        assert!(matches!(
            b.apply_deltas("london", 22, 1, &ch),
            Err(SyncError::OwnOrigin { .. })
        ));
    }

    #[test]
    fn digest_finds_drift_and_a_bad_snapshot_is_refused() {
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(&[("alice@x", 1), ("bob@x", 1)]));
        let (seq, mut entries, digest) = a.own_snapshot();
        let mut b = Directory::new("london", 2, 100);
        entries[0].1 = 5; // corrupted in transit
        assert!(matches!(
            b.apply_snapshot("tokyo", 1, seq, entries, digest),
            Err(SyncError::SnapshotDigest { .. })
        ));
        // Order of insertion does not matter; content does.
        let d1 = Digest::of([("a", 1), ("b", 2)]);
        let d2 = Digest::of([("b", 2), ("a", 1)]);
        let d3 = Digest::of([("a", 1), ("b", 3)]);
        assert_eq!(d1, d2);
        assert_ne!(d1, d3);
        assert_eq!(Digest::parse(&d1.render()), Some(d1));
        assert_eq!(Digest::parse("x:1"), None);
    }

    #[test]
    fn higher_epoch_wins_and_equal_epochs_are_a_deterministic_conflict() {
        let mut tokyo = Directory::new("tokyo", 1, 100);
        let mut newyork = Directory::new("newyork", 2, 100);
        let mut london = Directory::new("london", 3, 100);
        tokyo.set_own(&users(&[("alice@x", 1), ("dave@x", 4)]));
        newyork.set_own(&users(&[("alice@x", 2), ("dave@x", 4)]));
        replicate(&tokyo, &mut london);
        replicate(&newyork, &mut london);
        // A move: newyork claims alice at a higher epoch while tokyo still lists her.
        let h = london.resolve("alice@x").unwrap();
        assert_eq!(
            (h.cluster.as_str(), h.epoch, h.conflict),
            ("newyork", 2, false)
        );
        // dave: both at epoch 4: conflict, routed to the name that sorts first.
        let h = london.resolve("dave@x").unwrap();
        assert_eq!((h.cluster.as_str(), h.conflict), ("newyork", true));
        assert_eq!(
            london.conflicts(),
            vec![Conflict {
                user: "dave@x".into(),
                epoch: 4,
                clusters: vec!["newyork".into(), "tokyo".into()],
            }]
        );
        assert_eq!(london.conflicts_with("tokyo"), 1);
        assert_eq!(london.conflicts_with("london"), 0);
        assert_eq!(london.max_epoch("alice@x"), 2);
        // The same answer whichever cluster asks (tokyo sees newyork too).
        replicate(&newyork, &mut tokyo);
        assert_eq!(tokyo.resolve("dave@x").unwrap().cluster, "newyork");
        assert_eq!(tokyo.resolve("alice@x").unwrap().cluster, "newyork");
        // Forgetting a removed peer removes its claims.
        london.forget("newyork");
        assert_eq!(london.resolve("alice@x").unwrap().cluster, "tokyo");
        assert!(london.conflicts().is_empty());
    }
    /// Every user's conflict status by resolving each one: what the kept index must equal.
    fn conflicts_by_scan(d: &Directory) -> Vec<Conflict> {
        let mut all: Vec<String> = d.own.users.keys().cloned().collect();
        for r in d.replicas.values() {
            all.extend(r.entries.users.keys().cloned());
        }
        all.sort();
        all.dedup();
        all.into_iter()
            .filter_map(|u| {
                let h = d.resolve(&u)?;
                h.conflict.then(|| {
                    let mut clusters: Vec<String> = d
                        .claims(&u)
                        .into_iter()
                        .filter(|(_, e)| *e == h.epoch)
                        .map(|(c, _)| c)
                        .collect();
                    clusters.sort();
                    Conflict {
                        user: u,
                        epoch: h.epoch,
                        clusters,
                    }
                })
            })
            .collect()
    }

    #[test]
    fn the_conflict_index_follows_every_kind_of_change() {
        // A small xorshift so the sequence is the same on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let names = ["london", "newyork", "paris", "tokyo"];
        let mut peers: Vec<Directory> = names[1..]
            .iter()
            .enumerate()
            .map(|(i, n)| Directory::new(n, i as u64 + 2, 4))
            .collect();
        let mut me = Directory::new("london", 1, 4);
        let mut own: HashMap<String, u64> = HashMap::new();
        let mut peer_users: Vec<HashMap<String, u64>> = vec![HashMap::new(); 3];
        for step in 0..3000 {
            let user = format!("u{}@x", next(40));
            let epoch = 1 + next(3);
            let op = next(6);
            match op {
                0 => {
                    own.insert(user, epoch);
                    me.set_own(&own);
                }
                1 => {
                    own.remove(&user);
                    me.set_own(&own);
                }
                2 | 3 => {
                    // A peer changes and london gets its deltas (or a snapshot when the
                    // short log no longer reaches back).
                    let p = next(3) as usize;
                    if next(2) == 0 {
                        peer_users[p].insert(user, epoch);
                    } else {
                        peer_users[p].remove(&user);
                    }
                    peers[p].set_own(&peer_users[p]);
                    let (name, inc) = (peers[p].me().to_owned(), peers[p].incarnation());
                    let since = me.replica_position(&name).map(|(_, s)| s);
                    match since.map(|s| peers[p].catchup(Some(inc), s)) {
                        Some(Catchup::Deltas(ch)) => me
                            .apply_deltas(&name, inc, since.unwrap() + 1, &ch)
                            .unwrap(),
                        _ => {
                            let (seq, entries, digest) = peers[p].own_snapshot();
                            me.apply_snapshot(&name, inc, seq, entries, digest).unwrap();
                        }
                    }
                }
                4 => {
                    let p = next(3) as usize;
                    let (seq, entries, digest) = peers[p].own_snapshot();
                    let name = peers[p].me().to_owned();
                    me.apply_snapshot(&name, peers[p].incarnation(), seq, entries, digest)
                        .unwrap();
                }
                _ => {
                    let p = next(3) as usize;
                    me.forget(peers[p].me());
                }
            }
            assert_eq!(me.conflicts(), conflicts_by_scan(&me), "step {step}");
        }
        assert!(
            !me.conflicts().is_empty(),
            "the sequence made no conflict at all"
        );
    }
}
