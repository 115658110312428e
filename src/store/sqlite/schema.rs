//! The database file: opened with the settings every connection needs, its schema created on
//! first use and its version checked, every problem named with the file's path.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::store::StoreError;

/// Page size of a new file: a decision on a key of its own dirties a page of its own, written
/// whole to the log at commit; small pages keep that write small when keys are many.
const PAGE_BYTES: i64 = 1024;
/// SQLite's page cache per process, in KiB: 64 MiB, the hot part of a million counters.
const PAGE_CACHE_KIB: i64 = 64 * 1024;
/// How much of the file is read through a memory map rather than read() calls: 256 MiB,
/// more than a million counters take.
const MMAP_BYTES: i64 = 256 * 1024 * 1024;

/// Log pages after which a commit copies the log into the file (SQLite's default is 1,000):
/// fewer, larger checkpoints cost less per decision when keys are many, at the price of a
/// longer pause each (measured: docs/benchmarks.md).
const CHECKPOINT_PAGES: i64 = 4_096;

/// The schema this version writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Version 1: counters (the algorithm's three-number cell), flags, the tier mode, users and
/// their API keys. Keyed tables are WITHOUT ROWID: the key is the row's address. Expiry is
/// indexed so that sweeping and eviction find the oldest rows without a scan.
const SCHEMA_V1: &str = "
CREATE TABLE counters (
    key TEXT PRIMARY KEY NOT NULL,
    a INTEGER NOT NULL,
    b INTEGER NOT NULL,
    c INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX counters_by_expiry ON counters (expires_ms);
CREATE TABLE flags (
    key TEXT PRIMARY KEY NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX flags_by_expiry ON flags (expires_ms);
CREATE TABLE tier_mode (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    record TEXT NOT NULL,
    expires_ms INTEGER
);
CREATE TABLE users (
    domain TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    PRIMARY KEY (domain, user_id)
) WITHOUT ROWID;
CREATE TABLE api_keys (
    domain TEXT NOT NULL,
    api_key TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (domain, api_key)
) WITHOUT ROWID;
CREATE INDEX api_keys_by_user ON api_keys (domain, user_id);
";

/// Opens (creating if need be) the database at `path`, ready for the store: WAL, the
/// synchronous level, the busy timeout for other processes' write locks, the current schema.
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let named = |e: rusqlite::Error| settings(path, &e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut connection = Connection::open_with_flags(path, flags).map_err(named)?;
    connection.busy_timeout(busy_timeout).map_err(named)?;
    // Before the file has pages (ignored after): see PAGE_BYTES.
    connection
        .pragma_update(None, "page_size", PAGE_BYTES)
        .map_err(named)?;
    // WAL: readers never wait for the writer, and a commit is one append to the log.
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(named)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Settings(format!(
            "SQLite settings: {}: SQLite could not use its write-ahead log here (journal mode {mode}); put the file on a local filesystem",
            path.display()
        )));
    }
    // NORMAL in WAL mode: a commit survives the process dying (kill -9) because it is in the
    // log the OS holds; only an OS crash or power loss can lose the last commits. FULL would
    // fsync every commit, and every decision waits on a commit.
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(named)?;
    // Counters are read and written at random: with a million keys the tables outgrow SQLite's
    // default 2 MB page cache, and every miss is a read() of the file. A larger cache and the
    // file mapped into memory keep the cost of a decision flat as keys grow.
    connection
        .pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(named)?;
    connection
        .pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(named)?;
    connection
        .pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
        .map_err(named)?;
    migrate(&mut connection, path)?;
    Ok(connection)
}

/// Creates the schema in an empty file; refuses a file written by a newer version.
fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let named = |e: rusqlite::Error| settings(path, &e);
    // IMMEDIATE: two processes starting on a new file must not both create the schema.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(named)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(named)?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA_V1).map_err(named)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(named)?;
        }
        SCHEMA_VERSION => {}
        newer => {
            return Err(StoreError::Settings(format!(
                "SQLite settings: {}: written by a newer Floodgate (schema version {newer}; this one knows {SCHEMA_VERSION}): upgrade Floodgate or use another file",
                path.display()
            )));
        }
    }
    tx.commit().map_err(named)
}

/// A problem with the file itself, found at start-up: never transient.
fn settings(path: &Path, e: &rusqlite::Error) -> StoreError {
    let what = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not a SQLite database",
        Some(rusqlite::ErrorCode::CannotOpen) => {
            "cannot be opened or created (is its directory there and writable?)"
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied) => {
            "not writable"
        }
        _ => "unusable",
    };
    StoreError::Settings(format!("SQLite settings: {}: {what} ({e})", path.display()))
}
