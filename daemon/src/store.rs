//! The daemon's one database file, `STATE_DIR/ironcage.redb`.
//!
//! redb, not sled (see the design brief): crash-safe and durable on commit. The
//! budget ledger, the secrets store and the audit trail each keep their own
//! tables in this one file, so a change and the audit entry recording it can
//! share a transaction.
//!
//! This module stays a thin wrapper: it opens the file with errors an operator
//! can act on (locked by another process, damaged, written by a newer daemon),
//! hands out transactions (writes are always [`Durability::Immediate`]), and
//! keeps a schema-version table: one row per component (`store`, `budget`, ...)
//! so each can refuse a file written by a newer daemon and migrate an older one.
//!
//! redb takes an exclusive `flock` on the file, so a second daemon (or a second
//! [`Store`] in the same process) on the same file fails with [`StoreError::Locked`].

use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableTable, TableDefinition,
    WriteTransaction,
};
use std::path::{Path, PathBuf};

/// File name of the database inside the state directory.
pub const FILE_NAME: &str = "ironcage.redb";

/// Version of the store's own layout (the schema table itself).
pub const STORE_SCHEMA_VERSION: u32 = 1;

/// component name -> schema version of that component's tables.
const SCHEMA: TableDefinition<&str, u32> = TableDefinition::new("schema");

/// Errors of the state database, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state database {} is in use by another process (is another ironcaged running with this state directory?); stop it first, or give this daemon its own --state-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "the state database {} is damaged or not a redb file ({source}); restore it from a backup, or move it aside to start empty (that loses budgets, secrets and the audit trail)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "the state database {} uses an old redb file format ({version}); upgrade it with the redb tool of that version before starting",
        path.display()
    )]
    UpgradeRequired { path: PathBuf, version: u8 },
    #[error("cannot open the state database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "the state database {} holds {component} data of schema version {found}, newer than this ironcaged understands ({supported}); run the newer ironcaged, or restore a backup",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        component: String,
        found: u32,
        supported: u32,
    },
    #[error("state database {}: {what}: {source}", path.display())]
    Db {
        path: PathBuf,
        what: String,
        source: Box<redb::Error>,
    },
}

/// The open database. Share it as `Arc<Store>`; redb allows one writer and many
/// concurrent readers (readers see the last committed state).
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) `state_dir/ironcage.redb`, creating the directory if needed.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        Store::open_file(&state_dir.join(FILE_NAME))
    }

    /// Opens (or creates) the database at exactly `path`.
    pub fn open_file(path: &Path) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            DatabaseError::UpgradeRequired(version) => StoreError::UpgradeRequired {
                path: path.clone(),
                version,
            },
            DatabaseError::Storage(redb::StorageError::Corrupted(m)) => StoreError::Corrupt {
                path: path.clone(),
                source: Box::new(redb::Error::Corrupted(m)),
            },
            // A file that does not start with redb's header.
            DatabaseError::Storage(redb::StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::Corrupt {
                    path: path.clone(),
                    source: Box::new(redb::Error::Io(e)),
                }
            }
            other => StoreError::Open {
                path: path.clone(),
                source: Box::new(other.into()),
            },
        })?;
        let store = Store { db, path };
        store.init_schema()?;
        Ok(store)
    }

    /// Opens a database on a custom redb storage backend (fault-injection tests
    /// wrap the file backend); `path` is only used in messages.
    pub fn open_backend(
        path: &Path,
        backend: impl redb::StorageBackend,
    ) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        let store = Store { db, path };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        let previous = self.claim_schema(&txn, "store", STORE_SCHEMA_VERSION)?;
        if previous == Some(STORE_SCHEMA_VERSION) {
            // Nothing to write: drop the transaction rather than fsync at every start.
            txn.abort()
                .map_err(|e| self.err("abort the schema check", e))?;
            return Ok(());
        }
        self.commit(txn, "record the schema version")
    }

    /// The file this store lives in (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for components that need more than the helpers.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A write transaction that is durable once committed ([`Durability::Immediate`]).
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin a write transaction", e))?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// A read transaction on the last committed state.
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| self.err("begin a read transaction", e))
    }

    /// Commits `txn`; `what` says what it records, for the error.
    pub fn commit(&self, txn: WriteTransaction, what: &str) -> Result<(), StoreError> {
        txn.commit()
            .map_err(|e| self.err(&format!("commit ({what})"), e))
    }

    /// Checks that `component`'s tables are at most `supported` and records that
    /// version (inside `txn`, so a component creates its tables and claims its
    /// version atomically). Returns the version found before, `None` for a new
    /// file; a component whose found version is older migrates in the same `txn`.
    pub fn claim_schema(
        &self,
        txn: &WriteTransaction,
        component: &str,
        supported: u32,
    ) -> Result<Option<u32>, StoreError> {
        let mut t = txn
            .open_table(SCHEMA)
            .map_err(|e| self.err("open the schema table", e))?;
        let found = t
            .get(component)
            .map_err(|e| self.err("read the schema table", e))?
            .map(|v| v.value());
        match found {
            Some(v) if v > supported => Err(StoreError::NewerSchema {
                path: self.path.clone(),
                component: component.to_owned(),
                found: v,
                supported,
            }),
            Some(v) if v == supported => Ok(found),
            _ => {
                t.insert(component, supported)
                    .map_err(|e| self.err("write the schema table", e))?;
                Ok(found)
            }
        }
    }

    /// The recorded schema version of `component`, if any.
    pub fn schema_version(&self, component: &str) -> Result<Option<u32>, StoreError> {
        let txn = self.begin_read()?;
        let t = match txn.open_table(SCHEMA) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err("open the schema table", e)),
        };
        Ok(t.get(component)
            .map_err(|e| self.err("read the schema table", e))?
            .map(|v| v.value()))
    }

    /// Wraps a redb error with this file's path and what was being done.
    pub fn err(&self, what: &str, e: impl Into<redb::Error>) -> StoreError {
        let source = Box::new(e.into());
        match *source {
            redb::Error::Corrupted(_) => StoreError::Corrupt {
                path: self.path.clone(),
                source,
            },
            _ => StoreError::Db {
                path: self.path.clone(),
                what: what.to_owned(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn creates_and_reopens_with_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let s = Store::open(&state).unwrap();
        assert_eq!(s.path(), state.join(FILE_NAME));
        assert_eq!(
            s.schema_version("store").unwrap(),
            Some(STORE_SCHEMA_VERSION)
        );
        assert_eq!(s.schema_version("budget").unwrap(), None);
        let txn = s.begin_write().unwrap();
        assert_eq!(s.claim_schema(&txn, "budget", 3).unwrap(), None);
        s.commit(txn, "test").unwrap();
        drop(s);
        let s = Store::open(&state).unwrap();
        assert_eq!(s.schema_version("budget").unwrap(), Some(3));
        let txn = s.begin_write().unwrap();
        assert_eq!(s.claim_schema(&txn, "budget", 3).unwrap(), Some(3));
        let e = s.claim_schema(&txn, "budget", 2).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::NewerSchema {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("newer than this ironcaged"), "{e}");
    }

    #[test]
    fn second_open_is_locked_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.path().join(FILE_NAME).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("another process"), "{msg}");
    }

    #[test]
    fn garbage_file_is_reported_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[0x5a; 8192]).unwrap();
        drop(f);
        let e = Store::open(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert!(msg.contains("damaged or not a redb file"), "{msg}");
    }

    #[test]
    fn unwritable_state_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = Store::open(&file.join("sub")).unwrap_err();
        assert!(matches!(e, StoreError::CreateDir { .. }), "{e:?}");
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
}
