//! Self-tests of the Redis topology harness (tests/support/topology.rs): each topology starts,
//! behaves like the real thing, and leaves nothing behind.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::topology::{CliOutput, ClusterTopology, SentinelTopology, TlsRedis, redis_cli};

/// How a `redis-cli --tls` call presents itself to a [`TlsRedis`].
#[derive(Debug, Clone, Copy)]
struct TlsCli<'a> {
    /// The CA file redis-cli verifies the server with (`--cacert`).
    ca: &'a Path,
    /// A client certificate and key to present (`--cert`, `--key`).
    client: Option<(&'a Path, &'a Path)>,
    /// An ACL user (`--user`); needs `password`.
    user: Option<&'a str>,
    /// A password (`--pass`), for `requirepass` or the ACL user.
    password: Option<&'a str>,
}

/// redis-cli against the TLS server, a client independent of the harness's own.
trait TlsCliExt {
    /// `redis-cli --tls` presenting itself as `how` says, then `args`.
    fn cli_with(&self, how: &TlsCli<'_>, args: &[&str]) -> CliOutput;

    /// Whether `PING` made as `how` says gets `PONG`.
    fn ping_with(&self, how: &TlsCli<'_>) -> bool {
        self.cli_with(how, &["PING"]).stdout == "PONG"
    }
}

impl TlsCliExt for TlsRedis {
    fn cli_with(&self, how: &TlsCli<'_>, args: &[&str]) -> CliOutput {
        let port = self.port().to_string();
        let path = |p: &'_ Path| p.to_str().unwrap().to_owned();
        let mut all = vec![
            "--tls".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port,
        ];
        all.extend(["--cacert".into(), path(how.ca)]);
        if let Some((cert, key)) = how.client {
            all.extend(["--cert".into(), path(cert), "--key".into(), path(key)]);
        }
        if let Some(user) = how.user {
            all.extend(["--user".into(), user.into()]);
        }
        if let Some(password) = how.password {
            all.extend(["--pass".into(), password.into(), "--no-auth-warning".into()]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        redis_cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// redis-cli against the cluster.
trait ClusterCliExt {
    /// `redis-cli -c -p <first node> args` (following redirections).
    fn cli(&self, args: &[&str]) -> CliOutput;
}

impl ClusterCliExt for ClusterTopology {
    fn cli(&self, args: &[&str]) -> CliOutput {
        let port = self.ports()[0].to_string();
        redis_cli(&[&["-c", "-p", &port][..], args].concat())
    }
}

fn set(connection: &mut redis::Connection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(connection)
        .unwrap_or_else(|e| panic!("SET {key}: {e}"));
}

fn get(connection: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(connection)
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
}

#[test]
fn sentinel_replicates_fails_over_and_takes_the_old_master_back() {
    let started = Instant::now();
    let Some(mut topology) = SentinelTopology::start(1000) else {
        return;
    };
    eprintln!("sentinel topology up in {:?}", started.elapsed());
    let nodes = topology.node_ports();
    assert_eq!(nodes.len(), 3);
    assert_eq!(topology.sentinel_addrs().len(), 3);
    assert!(
        topology
            .sentinel_addrs()
            .iter()
            .all(|a| a.starts_with("127.0.0.1:"))
    );
    assert_eq!(topology.master_name(), "floodgate-test");
    let master = topology.master_port();
    assert_eq!(master, nodes[0], "the first node starts as master");
    assert_eq!(
        topology.url_of(master),
        format!("redis://127.0.0.1:{master}/0")
    );

    // Writes on the master reach the replicas.
    let mut connection = topology.connection(master);
    set(&mut connection, "harness:key", "before-failover");
    let acked: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(1000)
        .query(&mut connection)
        .unwrap();
    assert_eq!(acked, 2, "both replicas acknowledge the write");
    for &replica in &nodes[1..] {
        assert_eq!(topology.role(replica).unwrap(), "slave");
        assert_eq!(
            get(&mut topology.connection(replica), "harness:key").as_deref(),
            Some("before-failover")
        );
    }

    // Killing the master elects a replica.
    let old = topology.kill_master();
    assert_eq!(old, master);
    let failover = Instant::now();
    let new = topology.wait_for_new_master(old, Duration::from_secs(30));
    eprintln!(
        "failover with down-after 1000 ms: new master {new} after {:?}",
        failover.elapsed()
    );
    assert_ne!(new, old);
    assert!(nodes[1..].contains(&new));
    assert_eq!(topology.master_port(), new);
    let mut connection = topology.connection(new);
    assert_eq!(
        get(&mut connection, "harness:key").as_deref(),
        Some("before-failover")
    );
    set(&mut connection, "harness:key", "after-failover");

    // The old master comes back as a replica of the new one; the other replica follows too.
    let rejoin = Instant::now();
    topology.restart_node(old);
    assert_eq!(topology.wait_for_replica(old, Duration::from_secs(30)), new);
    assert_eq!(topology.role(old).unwrap(), "slave");
    let other = *nodes[1..].iter().find(|&&p| p != new).unwrap();
    assert_eq!(
        topology.wait_for_replica(other, Duration::from_secs(30)),
        new
    );
    eprintln!(
        "old master rejoined as replica after {:?}",
        rejoin.elapsed()
    );
    let acked: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(5000)
        .query(&mut connection)
        .unwrap();
    assert_eq!(acked, 2);
    assert_eq!(
        get(&mut topology.connection(old), "harness:key").as_deref(),
        Some("after-failover")
    );
    eprintln!("sentinel self-test took {:?}", started.elapsed());
}

#[test]
fn sentinel_with_a_password_requires_auth_on_the_data_nodes_only() {
    let Some(topology) = SentinelTopology::start_with(1000, Some("s3cret+pass")) else {
        return;
    };
    let master = topology.master_port();
    assert_eq!(topology.password(), Some("s3cret+pass"));
    assert_eq!(
        topology.url_of(master),
        format!("redis://:s3cret%2Bpass@127.0.0.1:{master}/0")
    );
    // With the password (from the URL) writes work and replicate.
    let mut connection = redis::Client::open(topology.url_of(master))
        .unwrap()
        .get_connection()
        .unwrap();
    set(&mut connection, "harness:auth", "yes");
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut connection)
        .unwrap();
    assert!(acked >= 1);
    // Without it, the node refuses commands.
    let mut anonymous = redis::Client::open(format!("redis://127.0.0.1:{master}/0"))
        .unwrap()
        .get_connection()
        .unwrap();
    let refused = redis::cmd("GET")
        .arg("harness:auth")
        .query::<Option<String>>(&mut anonymous)
        .unwrap_err();
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
    // The sentinels take no password.
    let sentinel = topology.sentinel_ports()[0];
    let reply: Vec<String> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(topology.master_name())
        .query(&mut topology.sentinel_connection(sentinel))
        .unwrap();
    assert_eq!(reply, ["127.0.0.1".to_owned(), master.to_string()]);
}

#[test]
fn cluster_spreads_keys_over_its_three_masters() {
    let started = Instant::now();
    let Some(cluster) = ClusterTopology::start() else {
        return;
    };
    eprintln!("cluster up in {:?}", started.elapsed());
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(cluster.node_addrs().len(), 3);
    for port in &ports {
        let out = cluster.cli(&["-p", &port.to_string(), "CLUSTER", "INFO"]);
        assert!(out.stdout.contains("cluster_state:ok"), "{out:?}");
    }

    // One key per owner, written through a redirect-following redis-cli.
    let mut key_of_owner: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let key = format!("harness:{i}");
        key_of_owner
            .entry(cluster.slot_owner_port(&key))
            .or_insert(key);
        if key_of_owner.len() == 3 {
            break;
        }
    }
    for (owner, key) in &key_of_owner {
        let out = cluster.cli(&["SET", key, &owner.to_string()]);
        assert_eq!(out.stdout, "OK", "{out:?}");
    }
    for (owner, key) in &key_of_owner {
        // The owner has it; the other nodes redirect.
        assert_eq!(
            get(&mut cluster.connection(*owner), key),
            Some(owner.to_string())
        );
        for other in ports.iter().filter(|p| *p != owner) {
            let moved = redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut cluster.connection(*other))
                .unwrap_err();
            assert!(
                moved.to_string().to_uppercase().contains("MOVED"),
                "{moved}"
            );
        }
        assert_eq!(cluster.dbsize(*owner), 1);
        let out = cluster.cli(&["GET", key]);
        assert_eq!(out.stdout, owner.to_string(), "{out:?}");
    }
    eprintln!("cluster self-test took {:?}", started.elapsed());
}

#[test]
fn tls_accepts_the_right_ca_and_refuses_the_wrong_one() {
    let started = Instant::now();
    let Some(tls) = TlsRedis::start() else {
        return;
    };
    eprintln!("TLS redis up in {:?}", started.elapsed());
    let port = tls.port();
    let (ca, wrong_ca) = (tls.certs.path("ca.pem"), tls.certs.path("wrong-ca.pem"));
    let (cert, key) = (
        tls.certs.path("client.pem"),
        tls.certs.path("client-key.pem"),
    );
    let right = TlsCli {
        ca: &ca,
        client: None,
        user: None,
        password: None,
    };
    assert!(tls.ping_with(&right), "the right CA, no client certificate");
    assert!(tls.ping_with(&TlsCli {
        client: Some((&cert, &key)),
        ..right
    }));
    let out = tls.cli_with(
        &TlsCli {
            ca: &wrong_ca,
            ..right
        },
        &["PING"],
    );
    assert_ne!(out.stdout, "PONG", "a server the CA did not sign: {out:?}");
    assert!(out.stderr.contains("certificate verify failed"), "{out:?}");
    // Plain TCP to the TLS port gets no answer.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            redis::cmd("PING").query::<String>(&mut c)
        });
    assert!(plain.is_err(), "{plain:?}");

    assert_eq!(tls.url(None, None), format!("rediss://127.0.0.1:{port}/0"));
    assert_eq!(
        tls.url(Some("floodgate"), Some("p@ss")),
        format!("rediss://floodgate:p%40ss@127.0.0.1:{port}/0")
    );
    assert_eq!(
        tls.url(None, Some("pw")),
        format!("rediss://:pw@127.0.0.1:{port}/0")
    );
}

#[test]
fn tls_with_client_certificates_and_a_password() {
    let Some(tls) = TlsRedis::start_with(true, Some("s3cret")) else {
        return;
    };
    assert!(tls.requires_client_cert());
    let ca = tls.certs.path("ca.pem");
    let (cert, key) = (
        tls.certs.path("client.pem"),
        tls.certs.path("client-key.pem"),
    );
    let (wrong_cert, wrong_key) = (
        tls.certs.path("wrong-client.pem"),
        tls.certs.path("wrong-client-key.pem"),
    );
    let good = TlsCli {
        ca: &ca,
        client: Some((&cert, &key)),
        user: None,
        password: Some("s3cret"),
    };
    assert!(tls.ping_with(&good));
    assert!(
        !tls.ping_with(&TlsCli {
            client: None,
            ..good
        }),
        "no client certificate"
    );
    assert!(
        !tls.ping_with(&TlsCli {
            client: Some((&wrong_cert, &wrong_key)),
            ..good
        }),
        "a client certificate from another CA"
    );
    let out = tls.cli_with(
        &TlsCli {
            password: None,
            ..good
        },
        &["PING"],
    );
    assert!(out.stdout.contains("NOAUTH"), "no password: {out:?}");

    tls.add_acl_user("floodgate", "app-pass");
    let user = TlsCli {
        user: Some("floodgate"),
        password: Some("app-pass"),
        ..good
    };
    assert!(tls.ping_with(&user));
    assert_eq!(tls.cli_with(&user, &["ACL", "WHOAMI"]).stdout, "floodgate");
    assert!(!tls.ping_with(&TlsCli {
        password: Some("wrong"),
        ..user
    }));
}

#[tokio::test]
async fn tls_certificates_satisfy_the_rust_redis_client() {
    let Some(tls) = TlsRedis::start_with(true, Some("s3cret")) else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificates = |root: &std::path::Path| redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(tls.certs.path("client.pem")).unwrap(),
            client_key: std::fs::read(tls.certs.path("client-key.pem")).unwrap(),
        }),
        root_cert: Some(std::fs::read(root).unwrap()),
    };
    let client = redis::Client::build_with_tls(
        tls.url(None, Some("s3cret")),
        certificates(&tls.certs.path("ca.pem")),
    )
    .unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pong, "PONG");

    let wrong = redis::Client::build_with_tls(
        tls.url(None, Some("s3cret")),
        certificates(&tls.certs.path("wrong-ca.pem")),
    )
    .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        wrong.get_multiplexed_async_connection(),
    )
    .await
    .expect("the handshake fails quickly");
    assert!(refused.is_err(), "a server the CA did not sign");
}

#[test]
fn guards_kill_their_processes_and_remove_their_dirs_even_on_panic() {
    let (seen, handed) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let Some(tls) = TlsRedis::start() else {
            return;
        };
        seen.send((tls.port(), tls.dir().to_owned())).unwrap();
        panic!("a test failing while the server runs");
    })
    .join();
    let Ok((port, dir)) = handed.recv() else {
        return; // skipped: redis-server missing
    };
    assert!(outcome.is_err(), "the thread panicked");
    assert!(!dir.exists(), "{} was removed", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} any more"
    );
}
