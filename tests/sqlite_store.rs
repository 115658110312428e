//! The SQLite store through the real `floodgate` binary: processes sharing one file share
//! every counter exactly; what was answered OK survives `kill -9`; blocks, the tier mode and
//! the user registry survive a restart; a file that cannot be used stops start-up with its
//! name.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodgate::pb::RateLimitRequest;
use floodgate::pb::rate_limit_response::Code;
use serde_json::{Value, json};
use support::process::Floodgate;
use support::{request, temp_dir, wait_for};

/// One counter that admits `N` per hour, and one that admits `BULK`.
const CONFIG: &str = "
domain: shared
descriptors:
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 30 }
  - key: bulk
    rate_limit: { unit: hour, requests_per_unit: 1000000 }
";
const BULK: u32 = 1_000_000;
const N: usize = 30;
/// Tiers with an hour-long block, so that the block outlives a restart.
const TIERS: &str = "
domain: api
tiers:
  free: { unit: day, base: 10, burst: 20, degraded: 2 }
  pro: { unit: day, base: 100, burst: 150, degraded: 100 }
api_keys:
  demo_pro_key_789: { user: demo_pro_user, tier: pro }
invalid_keys: { max_attempts: 3, window: 1h, block_for: 1h }
descriptors:
  - key: api_key
    tiered: true
";
const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// Writes the config into `dir` and returns its path.
fn config_in(dir: &Path) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    path.display().to_string()
}

/// `floodgate serve` on the SQLite file `db` with `config`.
async fn on_file(config: &str, db: &Path, extra: &[&str]) -> Floodgate {
    let db = db.display().to_string();
    let mut args = vec!["--store", "sqlite", "--sqlite-path", db.as_str()];
    args.extend(extra);
    Floodgate::start(config, &args).await
}

/// Sends `req` `count` times at once, spread over `servers`; returns how many were OK.
async fn admitted_at_once(servers: &[&Floodgate], req: &RateLimitRequest, count: usize) -> usize {
    let mut clients = Vec::new();
    for server in servers {
        clients.push(server.client().await);
    }
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let req = req.clone();
            tokio::spawn(async move {
                client
                    .should_rate_limit(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .overall_code()
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        ok += usize::from(call.await.unwrap() == Code::Ok);
    }
    ok
}

#[tokio::test]
async fn two_processes_on_one_file_admit_exactly_n_of_3n() {
    let dir = temp_dir("sqlite-shared");
    let config = config_in(dir.path());
    let db = dir.path().join("counters.sqlite");
    let a = on_file(&config, &db, &[]).await;
    let b = on_file(&config, &db, &[]).await;
    let req = request("shared", &[&[("user", "alice")]]);
    let ok = admitted_at_once(&[&a, &b], &req, 3 * N).await;
    assert_eq!(ok, N, "exactly N of 3N admitted across both processes");
}

#[tokio::test]
async fn every_answered_ok_survives_kill_9_under_load() {
    let dir = temp_dir("sqlite-kill");
    let config = config_in(dir.path());
    let db = dir.path().join("counters.sqlite");
    let mut first = on_file(&config, &db, &[]).await;
    let req = request("shared", &[&[("bulk", "bob")]]);
    // Four clients send one request after another, counting the OKs they are answered, until
    // the server is killed under them (SIGKILL: no shutdown, no flush).
    let answered = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (mut client, req, answered) = (first.client().await, req.clone(), answered.clone());
        senders.push(tokio::spawn(async move {
            while let Ok(response) = client.should_rate_limit(req.clone()).await {
                if response.into_inner().overall_code() == Code::Ok {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    wait_for("some requests answered OK", Duration::from_secs(10), || {
        let answered = answered.load(Ordering::SeqCst);
        async move { answered >= 200 }
    })
    .await;
    first.child.kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    let second = on_file(&config, &db, &[]).await;
    let response = second
        .client()
        .await
        .should_rate_limit(req)
        .await
        .unwrap()
        .into_inner();
    // This request is counted too: before it, the counter held BULK - 1 - remaining hits.
    let counted = BULK - 1 - response.statuses[0].limit_remaining;
    assert!(
        counted as usize >= answered,
        "every hit answered OK before the kill is still counted: {answered} answered, {counted} counted"
    );
    eprintln!("{answered} answered OK before the kill, {counted} counted after the restart");
}

async fn admin(floodgate: &Floodgate, method: &str, path: &str, body: &str) -> (u16, Value) {
    support::http::admin(floodgate.http_addr, ADMIN_KEY, method, path, body).await
}

/// A server with tiers on `db`, once the config's users are seeded.
async fn tiered(db: &Path) -> Floodgate {
    let config = db.with_extension("yaml");
    std::fs::write(&config, TIERS).unwrap();
    let config = config.display().to_string();
    let floodgate = on_file(&config, db, &["--admin-key", ADMIN_KEY]).await;
    wait_for("seeded users", Duration::from_secs(10), || async {
        admin(&floodgate, "GET", "/admin/users/demo_pro_user", "")
            .await
            .0
            == 200
    })
    .await;
    floodgate
}

#[tokio::test]
async fn blocks_the_tier_mode_and_the_registry_survive_a_restart() {
    let dir = temp_dir("sqlite-restart");
    let db = dir.path().join("state.sqlite");
    let mut before = tiered(&db).await;
    let created = json!({ "user_id": "carol", "tier": "pro", "api_keys": ["carol-key-0001"] });
    assert_eq!(
        admin(&before, "POST", "/admin/users", &created.to_string())
            .await
            .0,
        201
    );
    let degraded = json!({ "status": "DEGRADED", "reason": "maintenance" });
    assert_eq!(
        admin(&before, "POST", "/admin/health", &degraded.to_string())
            .await
            .0,
        200
    );
    // Unknown keys from one address until it is blocked.
    let mut client = before.client().await;
    let guess = request(
        "api",
        &[
            &[("api_key", "made-up-key")],
            &[("remote_address", "192.0.2.77")],
        ],
    );
    for _ in 0..20 {
        client.should_rate_limit(guess.clone()).await.unwrap();
    }
    before.child.kill();

    let after = tiered(&db).await;
    let (status, user) = admin(&after, "GET", "/admin/users/carol", "").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["tier"], "pro");
    assert_eq!(user["api_keys"], json!(["carol-key-0001"]));
    let (_, health) = admin(&after, "GET", "/admin/health", "").await;
    assert_eq!(health["status"], "DEGRADED");
    assert_eq!(health["reason"], "maintenance");
    // The block binds even a valid key from that address.
    let valid = request(
        "api",
        &[
            &[("api_key", "carol-key-0001")],
            &[("remote_address", "192.0.2.77")],
        ],
    );
    let response = after
        .client()
        .await
        .should_rate_limit(valid)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code(), Code::OverLimit, "still blocked");
}

/// `floodgate serve` on `db`, expected to stop at start-up; returns what it said.
fn refused(db: &Path) -> String {
    let dir = temp_dir("sqlite-refused-config");
    let config = config_in(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["serve", "--config", &config, "--store", "sqlite"])
        .arg("--sqlite-path")
        .arg(db)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "started on {}", db.display());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn an_unusable_file_stops_start_up_naming_it() {
    let dir = temp_dir("sqlite-refused");
    let not_a_database = dir.path().join("notes.txt");
    std::fs::write(
        &not_a_database,
        "these are not the pages of a database\n".repeat(200),
    )
    .unwrap();
    let said = refused(&not_a_database);
    assert!(
        said.contains("notes.txt") && said.contains("not a SQLite database"),
        "{said}"
    );

    let missing_dir = dir.path().join("no/such/dir/counters.sqlite");
    let said = refused(&missing_dir);
    assert!(said.contains("no/such/dir/counters.sqlite"), "{said}");

    // A file a newer version wrote: its schema version is refused, not guessed at.
    let newer = dir.path().join("newer.sqlite");
    let config = config_in(dir.path());
    let mut server = on_file(&config, &newer, &[]).await;
    server.child.kill();
    let bumped = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version=99'); c.commit()")
        .arg(&newer)
        .status()
        .unwrap();
    assert!(bumped.success());
    let said = refused(&newer);
    assert!(
        said.contains("newer Floodgate") && said.contains("99"),
        "{said}"
    );
}
