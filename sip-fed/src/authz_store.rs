//! The durable store of presence authorizations between local XMPP users and SIP partners'
//! users.
//!
//! RFC 8048 §5: an XMPP presence subscription is a long-lived authorization, while a SIP
//! SUBSCRIBE is a short notification dialog that the gateway keeps refreshing. The
//! authorization must therefore outlive the gateway process: after a restart the gateway reads
//! this store and subscribes again ([`AuthzStore::iter`]).
//!
//! Format: one JSON document (`{"version": 1, "authorizations": [...]}`), sorted by
//! (local, remote) so that it diffs well. Every change is written at once, atomically: the
//! whole document goes to a temporary file in the same directory, which is flushed to disk
//! (`fsync`), renamed over the store, and the directory is synced. The volume is small (one
//! entry per local user × remote contact), so rewriting the file per change costs little and
//! a crash never leaves a half-written store. If a write fails, the in-memory state is rolled
//! back and the error returned, so memory and disk never disagree.
//!
//! A missing file is an empty store (its directory must exist). A file that cannot be read is
//! an error that names the path and, for bad JSON, the line and column: the store is never
//! silently reset. Mutations take `&mut self`, so one owner (or a `Mutex`) serialises them;
//! two processes must not share one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Format version written into the file.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("presence authorization store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "presence authorization store {path} is corrupt at line {line}, column {column}: {msg}"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("presence authorization store {path} has version {found}, this build reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("presence authorization store {path} lists {local} → {remote} twice")]
    Duplicate {
        path: PathBuf,
        local: String,
        remote: String,
    },
}

/// The XMPP subscription state from the local user's point of view (RFC 6121 §2.1.2.5):
/// `To` = the local user sees the remote user's presence, `From` = the remote user sees the
/// local user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

/// One authorization between a local bare JID and a remote bare JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Authz {
    pub subscription: Subscription,
    /// The remote user asked to see the local user's presence; no answer yet.
    #[serde(default)]
    pub pending_in: bool,
    /// The local user asked to see the remote user's presence; no answer yet.
    #[serde(default)]
    pub pending_out: bool,
    /// When this entry last changed (seconds since the Unix epoch, as
    /// `fedgate_certs::unix_now`).
    #[serde(default)]
    pub updated_unix: i64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    local: String,
    remote: String,
    #[serde(flatten)]
    authz: Authz,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    #[serde(default)]
    authorizations: Vec<Entry>,
}

/// The store: an in-memory map mirrored to one file.
#[derive(Debug)]
pub struct AuthzStore {
    path: PathBuf,
    map: BTreeMap<(String, String), Authz>,
}

impl AuthzStore {
    /// Open the store at `path` (see the module documentation for missing and corrupt files).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let Some(bytes) = fedgate_certs::durable::read_state(&path).map_err(io)? else {
            return Ok(Self {
                path,
                map: BTreeMap::new(),
            });
        };
        let doc: Document = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        if doc.version != VERSION {
            return Err(StoreError::Version {
                path,
                found: doc.version,
            });
        }
        let mut map = BTreeMap::new();
        for e in doc.authorizations {
            if map
                .insert((e.local.clone(), e.remote.clone()), e.authz)
                .is_some()
            {
                return Err(StoreError::Duplicate {
                    path,
                    local: e.local,
                    remote: e.remote,
                });
            }
        }
        Ok(Self { path, map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The authorization between `local_bare` and `remote_bare`, if one is stored.
    pub fn get(&self, local_bare: &str, remote_bare: &str) -> Option<Authz> {
        self.map
            .get(&(local_bare.to_owned(), remote_bare.to_owned()))
            .copied()
    }

    /// Store (replace) an authorization and write the file.
    pub fn set(
        &mut self,
        local_bare: &str,
        remote_bare: &str,
        authz: Authz,
    ) -> Result<(), StoreError> {
        let key = (local_bare.to_owned(), remote_bare.to_owned());
        let old = self.map.insert(key.clone(), authz);
        if old == Some(authz) {
            return Ok(());
        }
        self.persist().inspect_err(|_| {
            match old {
                Some(o) => self.map.insert(key, o),
                None => self.map.remove(&key),
            };
        })
    }

    /// Remove an authorization (writing the file if there was one); returns what was stored.
    pub fn remove(
        &mut self,
        local_bare: &str,
        remote_bare: &str,
    ) -> Result<Option<Authz>, StoreError> {
        let key = (local_bare.to_owned(), remote_bare.to_owned());
        let Some(old) = self.map.remove(&key) else {
            return Ok(None);
        };
        match self.persist() {
            Ok(()) => Ok(Some(old)),
            Err(e) => {
                self.map.insert(key, old);
                Err(e)
            }
        }
    }

    /// All authorizations as (local bare JID, remote bare JID, authorization), sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Authz)> {
        self.map
            .iter()
            .map(|((l, r), a)| (l.as_str(), r.as_str(), a))
    }

    /// Write the whole store atomically (temp file, fsync, rename, directory fsync).
    fn persist(&self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let doc = Document {
            version: VERSION,
            authorizations: self
                .map
                .iter()
                .map(|((l, r), a)| Entry {
                    local: l.clone(),
                    remote: r.clone(),
                    authz: *a,
                })
                .collect(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        fedgate_certs::durable::replace(&self.path, &bytes, 0o600).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn a(subscription: Subscription, pending_in: bool, pending_out: bool, t: i64) -> Authz {
        Authz {
            subscription,
            pending_in,
            pending_out,
            updated_unix: t,
        }
    }

    #[test]
    fn missing_file_is_empty_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        let mut s = AuthzStore::open(&path).unwrap();
        assert!(s.is_empty());
        assert!(!path.exists(), "opening does not create the file");
        s.set(
            "juliet@example.test",
            "romeo@lync.test",
            a(Subscription::Both, false, false, 10),
        )
        .unwrap();
        s.set(
            "juliet@example.test",
            "bob@lync.test",
            a(Subscription::None, false, true, 11),
        )
        .unwrap();
        s.set(
            "alice@example.test",
            "bob@lync.test",
            a(Subscription::From, true, false, 12),
        )
        .unwrap();
        assert_eq!(
            s.remove("nobody@example.test", "x@lync.test").unwrap(),
            None
        );
        drop(s);

        let s = AuthzStore::open(&path).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.get("juliet@example.test", "romeo@lync.test"),
            Some(a(Subscription::Both, false, false, 10))
        );
        assert_eq!(
            s.get("juliet@example.test", "bob@lync.test"),
            Some(a(Subscription::None, false, true, 11))
        );
        assert_eq!(s.get("romeo@lync.test", "juliet@example.test"), None);
        let keys: Vec<(&str, &str)> = s.iter().map(|(l, r, _)| (l, r)).collect();
        assert_eq!(
            keys,
            [
                ("alice@example.test", "bob@lync.test"),
                ("juliet@example.test", "bob@lync.test"),
                ("juliet@example.test", "romeo@lync.test"),
            ]
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["authz.json"]);
    }

    #[test]
    fn removal_and_update_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        let mut s = AuthzStore::open(&path).unwrap();
        s.set("a@x.test", "b@y.test", a(Subscription::To, false, false, 1))
            .unwrap();
        s.set("a@x.test", "c@y.test", a(Subscription::To, false, false, 1))
            .unwrap();
        s.set(
            "a@x.test",
            "b@y.test",
            a(Subscription::Both, false, false, 2),
        )
        .unwrap();
        assert_eq!(
            s.remove("a@x.test", "c@y.test").unwrap(),
            Some(a(Subscription::To, false, false, 1))
        );
        let s = AuthzStore::open(&path).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.get("a@x.test", "b@y.test"),
            Some(a(Subscription::Both, false, false, 2))
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"subscription\": \"both\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "store is private to the gateway user");
        }
    }

    #[test]
    fn corrupt_file_is_an_error_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        std::fs::write(
            &path,
            "{\n  \"version\": 1,\n  \"authorizations\": [\n    {\"local\": \"a@x.test\",, }\n  ]\n}\n",
        )
        .unwrap();
        let err = AuthzStore::open(&path).unwrap_err();
        match &err {
            StoreError::Corrupt { path: p, line, .. } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 4);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("authz.json") && msg.contains("line 4"),
            "{msg}"
        );
        // The file is untouched.
        assert!(std::fs::read_to_string(&path).unwrap().contains(",,"));

        std::fs::write(&path, "{\"version\": 1, \"authorizations\": [{\"local\": \"a\", \"remote\": \"b\", \"subscription\": \"sometimes\"}]}").unwrap();
        assert!(matches!(
            AuthzStore::open(&path),
            Err(StoreError::Corrupt { line: 1, .. })
        ));
        std::fs::write(&path, "{\"version\": 2}").unwrap();
        assert!(matches!(
            AuthzStore::open(&path),
            Err(StoreError::Version { found: 2, .. })
        ));
        let dup = r#"{"version": 1, "authorizations": [
            {"local": "a", "remote": "b", "subscription": "to"},
            {"local": "a", "remote": "b", "subscription": "both"}]}"#;
        std::fs::write(&path, dup).unwrap();
        assert!(matches!(
            AuthzStore::open(&path),
            Err(StoreError::Duplicate { .. })
        ));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            AuthzStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = AuthzStore::open(dir.path().join("nope/authz.json")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }));
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn failed_write_rolls_back_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        let mut s = AuthzStore::open(&path).unwrap();
        s.set("a@x.test", "b@y.test", a(Subscription::To, false, false, 1))
            .unwrap();
        // A directory where the temporary file must go (`fedgate_certs::durable` names it
        // after the file and the process) makes every write fail (also as root).
        let blocker = dir
            .path()
            .join(format!(".authz.json.{}.tmp", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let r = s.set(
            "a@x.test",
            "c@y.test",
            a(Subscription::Both, false, false, 2),
        );
        assert!(matches!(r, Err(StoreError::Io { .. })), "{r:?}");
        assert_eq!(s.get("a@x.test", "c@y.test"), None, "rolled back");
        assert!(s.remove("a@x.test", "b@y.test").is_err());
        assert!(s.get("a@x.test", "b@y.test").is_some(), "rolled back");
        std::fs::remove_dir(&blocker).unwrap();
        let back = AuthzStore::open(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back.get("a@x.test", "b@y.test").is_some());
    }

    #[test]
    fn shared_through_a_mutex_all_writes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        let store = Arc::new(Mutex::new(AuthzStore::open(&path).unwrap()));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let local = format!("u{t}@x.test");
                        let remote = format!("r{i}@y.test");
                        store
                            .lock()
                            .unwrap()
                            .set(&local, &remote, a(Subscription::To, false, false, i))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = AuthzStore::open(&path).unwrap();
        assert_eq!(s.len(), 40);
        assert_eq!(
            s.get("u3@x.test", "r9@y.test"),
            Some(a(Subscription::To, false, false, 9))
        );
    }
}
