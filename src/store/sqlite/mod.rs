//! The SQLite store: counters, flags, the tier mode and the user registry in one file that
//! survives restarts and is shared, exactly, by every Floodgate process on the machine.
//!
//! One thread per process owns the connection (SQLite calls never block the async workers);
//! calls reach it over a channel, and the calls waiting are run together in one `BEGIN
//! IMMEDIATE` transaction, each answered once it is committed (see `worker`). SQLite's write
//! lock serialises the processes sharing the file, so a decision reads and writes its counters
//! with no other process in between: the same all-or-nothing rule as the other stores, across
//! processes. The file is in WAL mode with `synchronous=NORMAL` (see `schema`). Time is this
//! machine's wall clock, which every process on it shares.

mod schema;
mod tables;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use self::worker::{Answer, Db, Job, unavailable};
use super::{
    Check, Counted, CounterStore, Identity, RegistryError, SharedState, StoreError, TierModeRecord,
    UserRecord, UserRegistry,
};
use crate::clock::Clock;

/// Default file: where the Helm chart mounts its volume.
pub const DEFAULT_PATH: &str = "/var/lib/floodgate/floodgate.sqlite";
/// Calls queued for the connection's thread at most; past it callers wait (backpressure).
const QUEUE: usize = 4_096;
/// How long a group waits for another process's write lock before failing: far above any
/// group's transaction, short enough to answer within a request's deadline.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file (created with its schema if missing).
    pub path: PathBuf,
    /// Counters kept at most; past it, expired ones go first, then the closest to their end.
    pub max_keys: usize,
}

/// Counters and shared state in a SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    clock: Arc<dyn Clock>,
}

impl SqliteStore {
    /// Opens (or creates) the file and starts its thread. A file that cannot be used (not a
    /// database, not writable, written by a newer version) is an error naming it.
    pub fn open(options: &SqliteOptions, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        let connection = schema::open(&options.path, BUSY_TIMEOUT)?;
        let rows = tables::count_counters(&connection).map_err(|e| unavailable("count", &e))?;
        let db = Db {
            connection,
            rows,
            max_keys: options.max_keys.max(1),
            clock: clock.clone(),
        };
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("floodgate-sqlite".into())
            .spawn(move || worker::run(db, queue))
            .map_err(|e| StoreError::Unavailable(format!("SQLite thread: {e}")))?;
        Ok(SqliteStore { jobs, clock })
    }

    /// Runs `work` on the connection's thread, inside a group's transaction, and answers with
    /// its result once the transaction is committed.
    async fn call<T, E>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<Result<T, E>, rusqlite::Error> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |db| {
            let (result, failed) = match db.map(work) {
                Ok(Ok(result)) => (result, false),
                Ok(Err(e)) => (Err(unavailable("statement", &e).into()), true),
                Err(e) => (Err(StoreError::Unavailable(e.to_string()).into()), false),
            };
            let answer: Answer = Box::new(move |ended| {
                let result = match ended {
                    Some(e) => Err(StoreError::Unavailable(e.to_string()).into()),
                    None => result,
                };
                let _ = reply.send(result);
            });
            (answer, failed)
        });
        let gone = || StoreError::Unavailable("the SQLite thread has stopped".into());
        self.jobs.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl CounterStore for SqliteStore {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        let checks = checks.to_vec();
        let now = self.clock.now_ms();
        self.call(move |db| tables::apply(db, &checks, now).map(Ok))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|db| db.connection.execute_batch("SELECT 1").map(Ok))
            .await
    }
}

impl SharedState for SqliteStore {
    async fn set_flag(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let (key, expires_ms) = (key.to_owned(), self.clock.now_ms() + ttl_ms);
        self.call(move |db| tables::set_flag(&db.connection, &key, expires_ms).map(Ok))
            .await
    }

    async fn tier_mode(&self) -> Result<Option<TierModeRecord>, StoreError> {
        let now = self.clock.now_ms();
        let json: Option<String> = self
            .call::<_, StoreError>(move |db| tables::tier_mode(&db.connection, now).map(Ok))
            .await?;
        json.as_deref().map(TierModeRecord::from_json).transpose()
    }

    async fn set_tier_mode(&self, record: &TierModeRecord) -> Result<(), StoreError> {
        let json = record.to_json()?;
        let record = record.clone();
        self.call(move |db| tables::set_tier_mode(&db.connection, &record, &json).map(Ok))
            .await
    }
}

impl UserRegistry for SqliteStore {
    async fn identity(&self, domain: &str, api_key: &str) -> Result<Option<Identity>, StoreError> {
        let (domain, api_key) = (domain.to_owned(), api_key.to_owned());
        self.call(move |db| tables::identity(&db.connection, &domain, &api_key).map(Ok))
            .await
    }

    async fn user(&self, domain: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let (domain, user_id) = (domain.to_owned(), user_id.to_owned());
        self.call(move |db| tables::user(&db.connection, &domain, &user_id).map(Ok))
            .await
    }

    async fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let (domain, after) = (domain.to_owned(), after.to_owned());
        self.call(move |db| tables::users(&db.connection, &domain, &after, limit).map(Ok))
            .await
    }

    async fn create_user(&self, domain: &str, user: &UserRecord) -> Result<(), RegistryError> {
        let (domain, user) = (domain.to_owned(), user.clone());
        self.call(move |db| tables::create_user(&db.connection, &domain, &user))
            .await
    }

    async fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let (domain, user_id, api_key) =
            (domain.to_owned(), user_id.to_owned(), api_key.to_owned());
        self.call(move |db| tables::add_key(&db.connection, &domain, &user_id, &api_key))
            .await
    }

    async fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let (domain, user_id, api_key) =
            (domain.to_owned(), user_id.to_owned(), api_key.to_owned());
        self.call(move |db| tables::revoke_key(&db.connection, &domain, &user_id, &api_key))
            .await
    }

    async fn set_tier(&self, domain: &str, user_id: &str, tier: &str) -> Result<(), RegistryError> {
        let (domain, user_id, tier) = (domain.to_owned(), user_id.to_owned(), tier.to_owned());
        self.call(move |db| tables::set_tier(&db.connection, &domain, &user_id, &tier))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn store(dir: &tempfile::TempDir, max_keys: usize, clock: Arc<ManualClock>) -> SqliteStore {
        let options = SqliteOptions {
            path: dir.path().join("cap.sqlite"),
            max_keys,
        };
        SqliteStore::open(&options, clock).unwrap()
    }

    async fn rows(store: &SqliteStore) -> usize {
        store
            .call::<_, StoreError>(|db| tables::count_counters(&db.connection).map(Ok))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_flood_of_distinct_keys_stays_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = store(&dir, 100, clock.clone());
        for i in 0..1_000 {
            let check = Check::fixed_window(format!("flood-{i}"), 10, 60, 1);
            assert!(store.apply(&[check]).await.unwrap().admitted);
        }
        assert_eq!(rows(&store).await, 100, "the cap holds");
        // The newest counters are the ones kept (the oldest windows end first).
        let last = Check::fixed_window("flood-999", 10, 60, 0);
        assert_eq!(store.apply(&[last]).await.unwrap().counters[0].remaining, 9);
    }

    #[tokio::test]
    async fn expired_counters_make_room_first() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = store(&dir, 10, clock.clone());
        for i in 0..10 {
            let check = Check::fixed_window(format!("short-{i}"), 10, 1, 1);
            store.apply(&[check]).await.unwrap();
        }
        let long = Check::fixed_window("long", 10, 3600, 1);
        store.apply(std::slice::from_ref(&long)).await.unwrap();
        clock.advance(2_000);
        // Every short window has ended: the next counters replace them, the long one stays.
        for i in 0..9 {
            let check = Check::fixed_window(format!("new-{i}"), 10, 60, 1);
            store.apply(&[check]).await.unwrap();
        }
        let look = Check::fixed_window("long", 10, 3600, 0);
        assert_eq!(store.apply(&[look]).await.unwrap().counters[0].remaining, 9);
        assert!(rows(&store).await <= 10);
    }
}
