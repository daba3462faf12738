//! Running the `sluice` binary from tests: spawned processes killed when
//! dropped, config files, free ports, readiness by role.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TestDb;

pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // The test process's own SLUICE_ variables must not leak into the child.
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SLUICE_LOG", "warn");
    cmd
}

/// `sluice --config <config> <args>` to its end, stdin closed: (exit code,
/// stdout, stderr).
pub fn run_cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sluice()
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A spawned `sluice`, killed when the test ends, also when it panics.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice --config <config> serve`, killed when dropped.
pub fn serve(config: &Path) -> Running {
    Running(
        sluice()
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice serve"),
    )
}

pub fn write_config(dir: &Path, db: &TestDb, table: &str, tenant: &str, extra: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[source.postgres]\nurl = \"{}\"\nslot = \"slot_{}\"\ntables = [{{ table = \"{table}\", tenant_column = \"{tenant}\" }}]\n{extra}",
        db.url, db.name
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A port nothing listens on right now, for a process's `http.listen`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `sluice serve` on `port`, its logs at `warn` on the test's stderr.
pub fn serve_on(config: &Path, port: u16) -> Running {
    Running(
        sluice()
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice serve"),
    )
}

/// Waits until `/readyz` answers 200 with `role`; returns the address.
pub async fn ready_as(port: u16, role: &str) -> std::net::SocketAddr {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = std::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let r = super::http::get(addr, "/readyz", &[]).await;
            if r.status == 200 && r.json()["role"] == role {
                return addr;
            }
        }
        assert!(
            start.elapsed() < super::PATIENCE,
            "port {port} never became a ready {role}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A leader and then a standby `sluice serve` of `config`, each on a free
/// port and ready: (leader, its address, standby, its address).
pub async fn leader_and_standby(
    config: &Path,
) -> (Running, std::net::SocketAddr, Running, std::net::SocketAddr) {
    let (pa, pb) = (free_port(), free_port());
    let leader = serve_on(config, pa);
    let a = ready_as(pa, "leader").await;
    let standby = serve_on(config, pb);
    let b = ready_as(pb, "standby").await;
    (leader, a, standby, b)
}
