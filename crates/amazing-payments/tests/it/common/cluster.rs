//! A PostgreSQL cluster of a test's own (Debian's server binaries, `initdb`
//! under the temp directory, trust authentication, on a free port), for the
//! tests that stop, restart or replicate the database: the shared one must
//! stay up for every other test.

use super::procs::{Proc, free_port, log_file};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn pg_bin(tool: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} is missing: scripts/test.sh installs Debian's postgresql"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool as the cluster's owner (`postgres` when we are root:
/// the server refuses to run as root).
fn run(tool: &str, args: &[&str]) -> bool {
    let bin = pg_bin(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(args).output().unwrap();
    if !out.status.success() {
        eprintln!("{tool} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

fn own_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        Command::new("chown").args(["postgres"]).arg(&dir).status().unwrap();
    }
    dir
}

impl Cluster {
    /// A new primary, started, that also accepts replication connections.
    pub fn primary() -> Self {
        let dir = own_dir("primary");
        let data = dir.join("data");
        assert!(run("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "-E", "UTF8"]));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let cluster = Cluster { dir, port: free_port() };
        assert!(cluster.start());
        cluster
    }

    /// A streaming standby of `primary`, made with `pg_basebackup -R`, started.
    pub fn standby_of(primary: &Cluster) -> Self {
        let dir = own_dir("standby");
        let data = dir.join("data");
        let port = primary.port.to_string();
        assert!(run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast"
            ]
        ));
        let cluster = Cluster { dir, port: free_port() };
        assert!(cluster.start());
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c wal_level=replica -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-o", &options, "start"])
    }

    pub fn stop(&self) -> bool {
        run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// Stops it as a crash would: no checkpoint, and WAL not yet sent to
    /// a standby stays behind.
    pub fn crash(&self) -> bool {
        run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])
    }

    /// Makes every commit wait until a standby has it
    /// (`synchronous_standby_names = '*'`), once one streams synchronously.
    pub async fn synchronous(&self) {
        let db = sqlx::PgPool::connect(&self.url("postgres")).await.unwrap();
        sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'").execute(&db).await.unwrap();
        sqlx::query("SELECT pg_reload_conf()").execute(&db).await.unwrap();
        for _ in 0..100 {
            let sync: Option<String> =
                sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication WHERE sync_state = 'sync'")
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            if sync.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no standby streams synchronously");
    }

    pub fn promote(&self) -> bool {
        run("pg_ctl", &["-D", &self.data(), "-w", "promote"])
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(Path::new(&self.dir).join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory the unprivileged user PgBouncer runs as may use.
fn shared_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = Command::new("chmod").arg("777").arg(&dir).status();
    dir
}

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: scripts/test.sh installs Debian's {name}");
}

/// PgBouncer with the repository's configuration (`ops/pgbouncer/`), in
/// front of the PostgreSQL at `host:pg_port` (user `postgres`, trusted);
/// its port.
pub fn pgbouncer(host: &str, pg_port: u16) -> (Proc, u16) {
    let b = Bouncer::start(host, pg_port);
    (b.proc, b.port)
}

/// A PgBouncer of a test's own, which can be pointed at another server.
pub struct Bouncer {
    pub proc: Proc,
    pub port: u16,
    ini: PathBuf,
}

impl Bouncer {
    pub fn start(host: &str, pg_port: u16) -> Self {
        let (proc, port, ini) = start_pgbouncer(host, pg_port);
        Bouncer { proc, port, ini }
    }

    /// Points it at the PostgreSQL at `host:pg_port`, as an operator does
    /// after a failover: the `[databases]` entry rewritten, then a reload
    /// (SIGHUP). PgBouncer drops a server connection whose entry changed
    /// only once its client releases it; here the old server has crashed,
    /// so they are all gone (README, "Failover to a replica", says how to
    /// cut them when it has not).
    pub fn repoint(&self, host: &str, pg_port: u16) {
        let config = std::fs::read_to_string(&self.ini).unwrap();
        let config: Vec<String> = config
            .lines()
            .map(|l| if l.starts_with("* = host=") { format!("* = host={host} port={pg_port}") } else { l.to_string() })
            .collect();
        std::fs::write(&self.ini, config.join("\n") + "\n").unwrap();
        self.proc.signal("-HUP");
    }
}

fn start_pgbouncer(host: &str, pg_port: u16) -> (Proc, u16, PathBuf) {
    let user = "postgres";
    let dir = shared_dir("pgbouncer");
    let port = free_port();
    std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).unwrap();
    // The repository's file, with what differs here put in its place.
    let ours = std::fs::read_to_string(repo().join("ops/pgbouncer/pgbouncer.ini")).unwrap();
    let dir_s = dir.display().to_string();
    let here = [
        ("listen_addr", "127.0.0.1".to_string()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", String::new()),
        ("auth_type", "trust".into()),
        ("auth_file", format!("{dir_s}/userlist.txt")),
        ("logfile", format!("{dir_s}/pgbouncer.log")),
        ("pidfile", format!("{dir_s}/pgbouncer.pid")),
    ];
    let mut config = String::new();
    let mut section = String::new();
    for line in ours.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            section = line.trim().to_string();
            config.push_str(line);
            config.push('\n');
            match section.as_str() {
                "[databases]" => config.push_str(&format!("* = host={host} port={pg_port}\n")),
                "[pgbouncer]" => {
                    for (k, v) in &here {
                        config.push_str(&format!("{k} = {v}\n"));
                    }
                }
                _ => {}
            }
        } else if line.starts_with(';') || key.is_empty() {
            config.push_str(line);
            config.push('\n');
        } else if section == "[databases]" || here.iter().any(|(k, _)| *k == key) {
            // replaced above
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(&ini, config).unwrap();
    let stderr = log_file("pgbouncer");
    let mut cmd = Command::new(tool("pgbouncer"));
    // PgBouncer refuses to run as root: it drops to the PostgreSQL user.
    if is_root() {
        cmd.args(["-u", "postgres"]);
    }
    let child = cmd.arg(&ini).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap()).spawn().unwrap();
    (Proc { child, stderr }, port, ini)
}

pub async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}
