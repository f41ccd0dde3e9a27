//! A PostgreSQL cluster of a test's own (Debian's server binaries, `initdb`
//! under the temp directory, trust authentication, on a free port), for the
//! tests that stop, restart or replicate the database: the shared one must
//! stay up for every other test.

use super::procs::free_port;
use std::{
    path::{Path, PathBuf},
    process::Command,
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
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", data.to_str().unwrap(), "-R", "-X", "stream"]
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
