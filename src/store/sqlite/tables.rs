//! The store's statements, each run by the connection's thread inside a group's transaction
//! (see `worker`). Statements are prepared once per connection (`prepare_cached`).

use rusqlite::{Connection, OptionalExtension, params};

use super::worker::Db;
use crate::algorithm::Cell;
use crate::config::mask_secret;
use crate::store::counting::{self, Few, StoredCounter};
use crate::store::{Check, Counted, Identity, RegistryError, TierModeRecord, UserRecord};

/// Expired rows removed at most per sweep of each table: a sweep never pauses decisions long.
const SWEEP_ROWS: usize = 1_000;

/// Numbers are stored as SQLite's signed 64-bit integers, bit for bit.
const fn signed(n: u64) -> i64 {
    n as i64
}

/// The stored integer back as the number it was.
const fn unsigned(n: i64) -> u64 {
    n as u64
}

/// Checks and (if admitted) counts every check of one request at `now`.
pub(super) fn apply(db: &mut Db, checks: &[Check], now: u64) -> rusqlite::Result<Counted> {
    let stored = checks
        .iter()
        .map(|check| {
            if check.gate {
                flag(&db.connection, &check.key)
            } else {
                counter(&db.connection, &check.key)
            }
        })
        .collect::<rusqlite::Result<Few<Option<StoredCounter>>>>()?;
    let verdicts = counting::look(checks, |i| stored[i], now);
    let mut written = Ok(());
    let counted = counting::record(checks, &verdicts, now, |i, verdict| {
        if written.is_ok() {
            let fresh = stored[i].is_none_or(|s| s.expires_ms <= now);
            written = put(
                db,
                &checks[i].key,
                verdict.next,
                verdict.expires_ms,
                fresh,
                now,
            );
        }
    });
    written.map(|()| counted)
}

/// The counter at `key`, expired or not.
fn counter(connection: &Connection, key: &str) -> rusqlite::Result<Option<StoredCounter>> {
    connection
        .prepare_cached("SELECT a, b, c, expires_ms FROM counters WHERE key = ?1")?
        .query_row([key], |row| {
            Ok(StoredCounter {
                cell: Cell(
                    unsigned(row.get(0)?),
                    unsigned(row.get(1)?),
                    unsigned(row.get(2)?),
                ),
                expires_ms: unsigned(row.get(3)?),
            })
        })
        .optional()
}

/// The flag at `key`, expired or not.
fn flag(connection: &Connection, key: &str) -> rusqlite::Result<Option<StoredCounter>> {
    connection
        .prepare_cached("SELECT expires_ms FROM flags WHERE key = ?1")?
        .query_row([key], |row| {
            Ok(StoredCounter {
                cell: Cell::default(),
                expires_ms: unsigned(row.get(0)?),
            })
        })
        .optional()
}

/// Writes a counter; a `fresh` one (new, or replacing an expired row) first makes room under
/// the key cap.
fn put(
    db: &mut Db,
    key: &str,
    cell: Cell,
    expires_ms: u64,
    fresh: bool,
    now: u64,
) -> rusqlite::Result<()> {
    if fresh && db.rows >= db.max_keys {
        make_room(db, now)?;
    }
    let inserted = db
        .connection
        .prepare_cached(
            "INSERT INTO counters (key, a, b, c, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET a = ?2, b = ?3, c = ?4, expires_ms = ?5",
        )?
        .execute(params![
            key,
            signed(cell.0),
            signed(cell.1),
            signed(cell.2),
            signed(expires_ms)
        ])?;
    if fresh {
        db.rows += inserted;
    }
    Ok(())
}

/// Under the key cap again: expired counters go first; if none has expired, the one closest
/// to its end (as the memory store does).
fn make_room(db: &mut Db, now: u64) -> rusqlite::Result<()> {
    let swept = sweep_table(&db.connection, "counters", now)?;
    db.rows = db.rows.saturating_sub(swept);
    if db.rows >= db.max_keys {
        let evicted = db
            .connection
            .prepare_cached(
                "DELETE FROM counters WHERE key IN
                 (SELECT key FROM counters ORDER BY expires_ms LIMIT 1)",
            )?
            .execute([])?;
        db.rows = db.rows.saturating_sub(evicted);
    }
    Ok(())
}

/// Removes up to [`SWEEP_ROWS`] expired rows of each table.
pub(super) fn sweep(db: &mut Db) -> rusqlite::Result<()> {
    let now = db.clock.now_ms();
    db.connection.execute_batch("BEGIN IMMEDIATE")?;
    let swept = sweep_table(&db.connection, "counters", now)
        .and_then(|counters| sweep_table(&db.connection, "flags", now).map(|_| counters));
    match swept {
        Ok(counters) => {
            db.connection.execute_batch("COMMIT")?;
            db.rows = db.rows.saturating_sub(counters);
            Ok(())
        }
        Err(e) => {
            let _ = db.connection.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Removes up to [`SWEEP_ROWS`] rows of `table` expired by `now`; says how many.
fn sweep_table(connection: &Connection, table: &str, now: u64) -> rusqlite::Result<usize> {
    let sql = format!(
        "DELETE FROM {table} WHERE key IN
         (SELECT key FROM {table} WHERE expires_ms <= ?1 ORDER BY expires_ms LIMIT {SWEEP_ROWS})"
    );
    connection.prepare_cached(&sql)?.execute([signed(now)])
}

/// The counter rows in the file.
pub(super) fn count_counters(connection: &Connection) -> rusqlite::Result<usize> {
    connection
        .prepare_cached("SELECT count(*) FROM counters")?
        .query_row([], |row| row.get::<_, i64>(0))
        .map(|n| usize::try_from(n).unwrap_or(0))
}

/// Sets the flag at `key` until `expires_ms`.
pub(super) fn set_flag(
    connection: &Connection,
    key: &str,
    expires_ms: u64,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO flags (key, expires_ms) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET expires_ms = ?2",
        )?
        .execute(params![key, signed(expires_ms)])
        .map(drop)
}

/// The tier mode's record, unless it has expired by `now`.
pub(super) fn tier_mode(connection: &Connection, now: u64) -> rusqlite::Result<Option<String>> {
    connection
        .prepare_cached(
            "SELECT record FROM tier_mode WHERE id = 1 AND (expires_ms IS NULL OR expires_ms > ?1)",
        )?
        .query_row([signed(now)], |row| row.get(0))
        .optional()
}

/// Records the tier mode (`json`, the record as JSON).
pub(super) fn set_tier_mode(
    connection: &Connection,
    record: &TierModeRecord,
    json: &str,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO tier_mode (id, record, expires_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET record = ?1, expires_ms = ?2",
        )?
        .execute(params![json, record.expires_ms.map(signed)])
        .map(drop)
}

/// The owner of `api_key` and the owner's tier.
pub(super) fn identity(
    connection: &Connection,
    domain: &str,
    api_key: &str,
) -> rusqlite::Result<Option<Identity>> {
    connection
        .prepare_cached(
            "SELECT k.user_id, u.tier FROM api_keys k
             JOIN users u ON u.domain = k.domain AND u.user_id = k.user_id
             WHERE k.domain = ?1 AND k.api_key = ?2",
        )?
        .query_row([domain, api_key], |row| {
            Ok(Identity {
                user_id: row.get(0)?,
                tier: row.get(1)?,
            })
        })
        .optional()
}

/// One user with its keys, sorted.
pub(super) fn user(
    connection: &Connection,
    domain: &str,
    user_id: &str,
) -> rusqlite::Result<Option<UserRecord>> {
    let tier: Option<String> = connection
        .prepare_cached("SELECT tier FROM users WHERE domain = ?1 AND user_id = ?2")?
        .query_row([domain, user_id], |row| row.get(0))
        .optional()?;
    let Some(tier) = tier else {
        return Ok(None);
    };
    Ok(Some(UserRecord {
        user_id: user_id.to_owned(),
        tier,
        api_keys: keys_of(connection, domain, user_id)?,
    }))
}

/// A user's keys, sorted.
fn keys_of(connection: &Connection, domain: &str, user_id: &str) -> rusqlite::Result<Vec<String>> {
    connection
        .prepare_cached(
            "SELECT api_key FROM api_keys WHERE domain = ?1 AND user_id = ?2 ORDER BY api_key",
        )?
        .query_map([domain, user_id], |row| row.get(0))?
        .collect()
}

/// Up to `limit` users with ids after `after`, in id order.
pub(super) fn users(
    connection: &Connection,
    domain: &str,
    after: &str,
    limit: usize,
) -> rusqlite::Result<Vec<UserRecord>> {
    let page: Vec<(String, String)> = connection
        .prepare_cached(
            "SELECT user_id, tier FROM users WHERE domain = ?1 AND user_id > ?2
             ORDER BY user_id LIMIT ?3",
        )?
        .query_map(
            params![domain, after, i64::try_from(limit).unwrap_or(i64::MAX)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    page.into_iter()
        .map(|(user_id, tier)| {
            let api_keys = keys_of(connection, domain, &user_id)?;
            Ok(UserRecord {
                user_id,
                tier,
                api_keys,
            })
        })
        .collect()
}

/// Whether `user_id` exists in `domain`.
fn user_exists(connection: &Connection, domain: &str, user_id: &str) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM users WHERE domain = ?1 AND user_id = ?2")?
        .exists([domain, user_id])
}

/// Whether `api_key` belongs to anyone in `domain`.
fn key_taken(connection: &Connection, domain: &str, api_key: &str) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM api_keys WHERE domain = ?1 AND api_key = ?2")?
        .exists([domain, api_key])
}

/// Inserts one key of `user_id`.
fn insert_key(
    connection: &Connection,
    domain: &str,
    user_id: &str,
    api_key: &str,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached("INSERT INTO api_keys (domain, api_key, user_id) VALUES (?1, ?2, ?3)")?
        .execute([domain, api_key, user_id])
        .map(drop)
}

/// A registry refusal, or the database's failure.
pub(super) type Registry<T> = Result<Result<T, RegistryError>, rusqlite::Error>;

/// Creates a user with its keys, all or nothing (checked before anything is written).
pub(super) fn create_user(
    connection: &Connection,
    domain: &str,
    user: &UserRecord,
) -> Registry<()> {
    if user_exists(connection, domain, &user.user_id)? {
        return Ok(Err(RegistryError::UserExists(user.user_id.clone())));
    }
    for key in &user.api_keys {
        if key_taken(connection, domain, key)? {
            return Ok(Err(RegistryError::KeyTaken(mask_secret(key))));
        }
    }
    connection
        .prepare_cached("INSERT INTO users (domain, user_id, tier) VALUES (?1, ?2, ?3)")?
        .execute([domain, &user.user_id, &user.tier])?;
    for key in &user.api_keys {
        insert_key(connection, domain, &user.user_id, key)?;
    }
    Ok(Ok(()))
}

/// Gives an existing user another key (the user is checked first, as the other stores do).
pub(super) fn add_key(
    connection: &Connection,
    domain: &str,
    user_id: &str,
    api_key: &str,
) -> Registry<()> {
    if !user_exists(connection, domain, user_id)? {
        return Ok(Err(RegistryError::UnknownUser(user_id.to_owned())));
    }
    if key_taken(connection, domain, api_key)? {
        return Ok(Err(RegistryError::KeyTaken(mask_secret(api_key))));
    }
    insert_key(connection, domain, user_id, api_key)?;
    Ok(Ok(()))
}

/// Revokes a key of a user.
pub(super) fn revoke_key(
    connection: &Connection,
    domain: &str,
    user_id: &str,
    api_key: &str,
) -> Registry<()> {
    if !user_exists(connection, domain, user_id)? {
        return Ok(Err(RegistryError::UnknownUser(user_id.to_owned())));
    }
    let removed = connection
        .prepare_cached("DELETE FROM api_keys WHERE domain = ?1 AND api_key = ?2 AND user_id = ?3")?
        .execute([domain, api_key, user_id])?;
    if removed == 0 {
        return Ok(Err(RegistryError::UnknownKey(mask_secret(api_key))));
    }
    Ok(Ok(()))
}

/// Moves a user to another tier.
pub(super) fn set_tier(
    connection: &Connection,
    domain: &str,
    user_id: &str,
    tier: &str,
) -> Registry<()> {
    let changed = connection
        .prepare_cached("UPDATE users SET tier = ?3 WHERE domain = ?1 AND user_id = ?2")?
        .execute([domain, user_id, tier])?;
    if changed == 0 {
        return Ok(Err(RegistryError::UnknownUser(user_id.to_owned())));
    }
    Ok(Ok(()))
}
