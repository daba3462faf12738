//! A throwaway local PostgreSQL cluster, for `sluice demo` and for every
//! integration test.
//!
//! Sluice reads a server's logical replication stream, so exercising it for
//! real needs a server with `wal_level=logical`, replication slots and
//! walsenders to spare, and nothing else depending on it. A [`LocalPg`] owns
//! exactly that: a fresh temp directory holding the data directory, the
//! unix-domain socket and the server log; a cluster `initdb`'d into it
//! (superuser `postgres`, trust authentication, UTF8, locale C); and the
//! postmaster listening on `127.0.0.1` on a free port. Dropping the value
//! stops the server (`pg_ctl stop -m immediate`) and deletes the directory.
//! Each cluster also gets a small detached watchdog process that does the
//! same once our process is gone, so a test binary killed with SIGKILL (or a
//! process that never drops the value, like [`shared`]'s static) leaves no
//! running postgres and no directory behind.
//!
//! It only *finds* the server binaries (`$SLUICE_PG_BIN`, then
//! `/usr/lib/postgresql/<major>/bin` with the highest major >= 14, then
//! `initdb` on `PATH`); installing them is `scripts/ensure-postgres.sh`'s job
//! (Debian's packages), or `scripts/install-postgres.sh <major>`'s for a
//! given major version 14 to 18.
//!
//! # Server and client binaries
//!
//! The server binaries (`initdb`, `pg_ctl`, `postgres`) always come from the
//! one bin dir found above, so its major version is the server's. The
//! client programs (`psql`, which [`LocalPg::psql`] runs, and
//! `pg_recvlogical`, which the benchmarks run) come from that same dir when
//! it holds them, and otherwise from the first of
//! `/usr/lib/postgresql/<major>/bin` (highest major >= 14) or `PATH` that
//! holds both: [`LocalPg::client_bin_dir`]. That is for server-only trees,
//! like the ones `scripts/install-postgres.sh` unpacks for the majors Debian
//! does not ship (they hold just `initdb`, `pg_ctl` and `postgres`); the
//! clients then are Debian's, of another major, which is fine: psql and
//! pg_recvlogical speak the same protocol to every server major from 9.2
//! on, and nothing here relies on a feature of a newer client.
//! [`LocalPg::major`] tells the server's major version, so a test can skip
//! what an older server lacks (saying so).
//!
//! `initdb` and `postgres` refuse to run as root. When this process is root,
//! every server-side command (`initdb`, `pg_ctl`) runs as the `postgres` OS
//! user (`runuser`, falling back to `su`), and the temp directory is created
//! under `/tmp` and handed to that user. `psql` is only a client and runs as
//! ourselves.
//!
//! The code is synchronous `std::process` on purpose: it runs from tests
//! that are not async and from `spawn_blocking`.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Oldest major version accepted.
const MIN_MAJOR: u32 = 14;
/// What the server's bin dir must hold.
const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// The client programs: from the server's bin dir when it holds both, else
/// from the default places (see the module documentation).
const CLIENT_BINARIES: [&str; 2] = ["psql", "pg_recvlogical"];
/// The OS user the server runs as when we are root, and the superuser.
const PG_USER: &str = "postgres";
/// Start attempts, each on another port, when the port turns out taken.
const START_ATTEMPTS: usize = 5;
/// Seconds `pg_ctl -w` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Server log, inside the data directory (written through `pg_ctl -l`).
const LOG_FILE: &str = "postgres.log";
/// Our settings, included from `postgresql.conf`, rewritten per start attempt.
const SETTINGS_FILE: &str = "sluice.conf";
/// Lines of a failed command's output (or of the server log) kept in errors.
const TAIL_LINES: usize = 20;
/// Longest accepted database-name prefix (names must fit NAMEDATALEN with
/// room for the suffix and for slot names derived from them).
const MAX_PREFIX_LEN: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("no usable postgresql server binaries: {detail}; run scripts/ensure-postgres.sh (or scripts/install-postgres.sh <major>), or set SLUICE_PG_BIN to a bin dir holding initdb, pg_ctl and postgres (postgresql {MIN_MAJOR} or newer)")]
    BinariesNotFound { detail: String },
    #[error("no postgresql client programs (psql, pg_recvlogical): {detail}; run scripts/ensure-postgres.sh, which installs them")]
    ClientsNotFound { detail: String },
    #[error("could not read the server's version: `SHOW server_version_num` answered {answer:?}")]
    UnknownVersion { answer: String },
    #[error("running as root, so the server must run as the `postgres` os user, which does not exist; run scripts/ensure-postgres.sh")]
    NoPostgresUser,
    #[error("running as root, but neither runuser nor su was found to run the server as the `postgres` os user")]
    NoUserSwitch,
    #[error("could not {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("could not find a free tcp port on 127.0.0.1: {0}")]
    FreePort(io::Error),
    #[error("could not run `{command}`: {error}")]
    Spawn { command: String, error: io::Error },
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("postgres did not start on port {port}: `{command}` failed ({status}): {output}\nserver log {log}:\n{log_tail}")]
    StartFailed {
        port: u16,
        command: String,
        status: String,
        output: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("postgres did not start on any of {START_ATTEMPTS} ports ({ports}), each already in use; last failure: {last}")]
    PortsExhausted {
        ports: String,
        last: Box<LocalPgError>,
    },
    #[error("invalid database name prefix {prefix:?}: use 1 to {MAX_PREFIX_LEN} characters from [a-z0-9_]")]
    InvalidPrefix { prefix: String },
}

impl LocalPgError {
    fn io(action: &'static str, path: &Path, error: io::Error) -> LocalPgError {
        LocalPgError::Io {
            action,
            path: path.to_owned(),
            error,
        }
    }

    /// Whether a failed start is the port being taken (worth another port).
    fn is_port_in_use(&self) -> bool {
        match self {
            LocalPgError::StartFailed { log_tail, .. } => {
                log_tail.contains("Address already in use")
                    || log_tail.contains("could not bind")
                    || log_tail.contains("could not create any TCP/IP sockets")
            }
            _ => false,
        }
    }
}

/// How server-side commands are run.
#[derive(Debug, Clone)]
enum RunAs {
    /// As ourselves (we are not root).
    Me,
    /// `runuser -u postgres -- program args…`
    Runuser(PathBuf),
    /// `su -s /bin/sh -c 'program args…' postgres`
    Su(PathBuf),
}

impl RunAs {
    fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        let mut cmd = match self {
            RunAs::Me => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            RunAs::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", PG_USER, "--"]).arg(program).args(args);
                cmd
            }
            RunAs::Su(su) => {
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c"])
                    .arg(shell_words(program, args))
                    .arg(PG_USER);
                cmd
            }
        };
        clean_env(&mut cmd);
        cmd
    }

    /// The same command as one `sh` line (for the watchdog).
    fn shell_line(&self, program: &Path, args: &[&OsStr]) -> String {
        let inner = shell_words(program, args);
        match self {
            RunAs::Me => inner,
            RunAs::Runuser(runuser) => format!(
                "{} -u {PG_USER} -- {inner}",
                sh_quote(&runuser.to_string_lossy())
            ),
            RunAs::Su(su) => format!(
                "{} -s /bin/sh -c {} {PG_USER}",
                sh_quote(&su.to_string_lossy()),
                sh_quote(&inner)
            ),
        }
    }

    /// Appended to command descriptions in errors.
    fn suffix(&self) -> &'static str {
        match self {
            RunAs::Me => "",
            RunAs::Runuser(_) | RunAs::Su(_) => " (as postgres)",
        }
    }
}

/// A running throwaway cluster; see the module documentation.
#[derive(Debug)]
pub struct LocalPg {
    /// The temp directory we own: unix socket dir and parent of `data_dir`.
    root: PathBuf,
    data_dir: PathBuf,
    /// Server binaries (`initdb`, `pg_ctl`, `postgres`).
    bin_dir: PathBuf,
    /// `psql` and `pg_recvlogical`: `bin_dir` itself when it has them.
    client_bin_dir: PathBuf,
    /// The running server's `server_version_num` (e.g. 170010).
    version_num: u32,
    port: u16,
    run_as: RunAs,
    /// Stops the server and removes `root` once this process is gone.
    watchdog: Mutex<Option<Child>>,
    /// Set once teardown ran (Drop, or exit cleanup for [`shared`]).
    torn_down: AtomicBool,
    /// Whether the cluster was started with [`LocalPg::start_tls`].
    tls: bool,
}

/// A server certificate and its key, PEM, for [`LocalPg::start_tls`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What `pg_hba.conf` holds in a cluster started with
/// [`LocalPg::start_tls`]: TCP clients must use TLS (as on RDS with
/// `rds.force_ssl`, or Supabase); trust inside it.
const TLS_ONLY_HBA: &str = "# written by sluice::localpg: TCP only over TLS\n\
     local all all trust\n\
     hostssl all all 127.0.0.1/32 trust\n\
     hostssl replication all 127.0.0.1/32 trust\n";

impl LocalPg {
    /// Finds the binaries (env `SLUICE_PG_BIN`, `/usr/lib/postgresql/*/bin`
    /// highest >= 14, `PATH`; the clients as the module documentation says;
    /// it does not install: callers run `scripts/ensure-postgres.sh` or
    /// `scripts/install-postgres.sh` first), initdb's a fresh cluster in a new
    /// temp dir, writes the settings (logical replication, fsync on,
    /// `max_prepared_transactions = 10` so tests can `PREPARE TRANSACTION`,
    /// port = a free one, socket in the temp dir, log in the data dir; only
    /// settings every major from 14 to 18 knows), starts it
    /// with `pg_ctl -w` (retrying on another port, up to 5 attempts, when the
    /// port turns out taken) and returns once it answers a query over TCP.
    ///
    /// As root, the server-side commands run as the `postgres` OS user and the
    /// temp dir (under `/tmp`, mode 0700) belongs to that user.
    pub fn start() -> Result<LocalPg, LocalPgError> {
        LocalPg::start_with(None)
    }

    /// [`LocalPg::start`], with `ssl = on` and `tls`'s certificate and key,
    /// and a `pg_hba.conf` that accepts TCP connections only over TLS
    /// (`hostssl` lines; a plain connection is refused with "no pg_hba.conf
    /// entry … no encryption").
    pub fn start_tls(tls: ServerTls) -> Result<LocalPg, LocalPgError> {
        LocalPg::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Result<LocalPg, LocalPgError> {
        let bin_dir = find_bin_dir()?;
        let client_bin_dir = find_client_dir(&bin_dir)?;
        let (run_as, owner) = if running_as_root() {
            (find_user_switch()?, Some(postgres_ids()?))
        } else {
            (RunAs::Me, None)
        };
        let root = make_temp_dir(owner)?;
        // From here on, dropping `pg` (on any error) cleans up.
        let mut pg = LocalPg {
            data_dir: root.join("data"),
            root,
            bin_dir,
            client_bin_dir,
            version_num: 0,
            port: 0,
            run_as,
            watchdog: Mutex::new(None),
            torn_down: AtomicBool::new(false),
            tls: tls.is_some(),
        };
        let watchdog = pg.spawn_watchdog()?;
        *pg.watchdog
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Some(watchdog);

        let data = pg.data_dir.clone();
        pg.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                PG_USER.as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                // Skips initdb's own fsync of the fresh files (seconds on slow
                // disks). The server itself runs with fsync=on; nothing here
                // survives an OS crash anyway.
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        pg.include_settings()?;
        if let Some(tls) = &tls {
            pg.write_server_file("server.crt", &tls.cert_pem, owner)?;
            pg.write_server_file("server.key", &tls.key_pem, owner)?;
            pg.write_server_file("pg_hba.conf", TLS_ONLY_HBA, owner)?;
        }

        let mut ports = Vec::new();
        loop {
            pg.port = free_port()?;
            ports.push(pg.port.to_string());
            pg.write_settings(owner)?;
            match pg.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if e.is_port_in_use() && ports.len() < START_ATTEMPTS => continue,
                Err(e) if e.is_port_in_use() => {
                    return Err(LocalPgError::PortsExhausted {
                        ports: ports.join(", "),
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        let answer = pg.psql("postgres", "SHOW server_version_num")?;
        pg.version_num = answer
            .trim()
            .parse()
            .map_err(|_| LocalPgError::UnknownVersion { answer })?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server binaries' dir (`initdb`, `pg_ctl`, `postgres`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The dir of the client programs `psql` and `pg_recvlogical`: the same
    /// as [`LocalPg::bin_dir`] when that holds them, else another install's
    /// (see the module documentation).
    pub fn client_bin_dir(&self) -> &Path {
        &self.client_bin_dir
    }

    /// The server's major version: 14, 15, 16, 17, 18, …
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }

    /// The server's `server_version_num`, e.g. `170010` for 17.10.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres@127.0.0.1:{port}/{db}`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` (one or more statements, as a script) through the
    /// cluster's psql (`-v ON_ERROR_STOP=1 -X -q -At`, over TCP as
    /// `postgres`) and returns its stdout without the trailing newline(s):
    /// one line per row, columns separated by `|`. For setup in scripts and
    /// tests that are not async.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, LocalPgError> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={PG_USER} dbname={} connect_timeout=10",
            self.port,
            conninfo_quote(db)
        );
        let program = self.client_bin_dir.join("psql");
        let mut cmd = Command::new(&program);
        cmd.args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-f", "-", "-d"])
            .arg(&conninfo);
        clean_env(&mut cmd);
        cmd.env("PGCLIENTENCODING", "UTF8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let first_line = sql.trim().lines().next().unwrap_or("");
        let shown: String = first_line.chars().take(120).collect();
        let ellipsis = if shown.len() < sql.trim().len() {
            "…"
        } else {
            ""
        };
        let description = format!("psql -d {db} <<< {shown}{ellipsis}");
        let mut child = cmd.spawn().map_err(|error| LocalPgError::Spawn {
            command: description.clone(),
            error,
        })?;
        let stdin = child.stdin.take();
        // Feed stdin from another thread so a large script cannot deadlock
        // against a large result.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // psql stopping early (ON_ERROR_STOP) shows up in its
                    // exit status; a broken pipe here adds nothing.
                    let _ = stdin.write_all(sql.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(|error| LocalPgError::Spawn {
            command: description.clone(),
            error,
        })?;
        let output = check(output, description)?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end_matches(['\n', '\r'])
            .to_owned())
    }

    /// Creates a database named `{prefix}_{n}`, `n` unique in this process,
    /// and returns the name. `prefix` must be 1 to 40 characters from
    /// `[a-z0-9_]` (so the name needs no quoting anywhere, and slot names
    /// derived from it stay valid).
    pub fn create_database(&self, prefix: &str) -> Result<String, LocalPgError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(LocalPgError::InvalidPrefix {
                prefix: prefix.to_owned(),
            });
        }
        let name = format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(name)
    }

    /// `pg_ctl stop -m fast`, then starts the server again on the same port.
    pub fn restart(&self) -> Result<(), LocalPgError> {
        self.stop()?;
        self.start_again()
    }

    /// Stops the server (`pg_ctl stop -m fast -w`); the data stays. Fails if
    /// it is not running.
    pub fn stop(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir.as_os_str();
        self.run_pg(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                data,
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
                "-s".as_ref(),
            ],
        )?;
        Ok(())
    }

    /// Starts the stopped server again, on the same port (so URLs handed out
    /// stay valid; this fails if someone took the port meanwhile), and
    /// returns once it answers a query.
    pub fn start_again(&self) -> Result<(), LocalPgError> {
        self.pg_ctl_start()?;
        self.psql("postgres", "SELECT 1")?;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash (no
    /// checkpoint, no goodbye to clients or standbys).
    pub fn kill(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir.as_os_str();
        self.run_pg(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                data,
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-s".as_ref(),
            ],
        )?;
        Ok(())
    }

    /// `pg_ctl promote -w`: a standby becomes a primary.
    pub fn promote(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir.as_os_str();
        self.run_pg(
            "pg_ctl",
            &[
                "promote".as_ref(),
                "-D".as_ref(),
                data,
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
                "-s".as_ref(),
            ],
        )?;
        Ok(())
    }

    /// Turns this cluster into a physical standby of `primary`, streaming
    /// through the physical slot `slot` (created on the primary here), and
    /// starts both. The standby is a copy of the primary's data directory
    /// taken while the primary is cleanly stopped (a cold base backup: the
    /// same result as `pg_basebackup`, which the server-only binary trees
    /// of some majors do not ship). `settings` are extra lines for the
    /// standby's `postgresql.auto.conf` (e.g. `sync_replication_slots =
    /// on`). This cluster's own data is replaced; its port, socket dir and
    /// watchdog stay.
    pub fn become_standby_of(
        &self,
        primary: &LocalPg,
        slot: &str,
        settings: &str,
    ) -> Result<(), LocalPgError> {
        primary.psql(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
        )?;
        self.stop()?;
        primary.stop()?;
        let script = format!(
            "rm -rf '{to}' && cp -a '{from}' '{to}' && rm -f '{to}/postmaster.pid' '{to}/{log}'",
            from = primary.data_dir.display(),
            to = self.data_dir.display(),
            log = LOG_FILE,
        );
        let out = self
            .run_as
            .command(Path::new("/bin/sh"), &["-c".as_ref(), script.as_ref()])
            .current_dir("/")
            .output()
            .map_err(|error| LocalPgError::Spawn {
                command: script.clone(),
                error,
            })?;
        if !out.status.success() {
            return Err(LocalPgError::CommandFailed {
                command: script,
                status: out.status.to_string(),
                output: tail(&String::from_utf8_lossy(&out.stderr)),
            });
        }
        let owner = if running_as_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        // Our port and socket dir, not the primary's.
        self.write_settings(owner)?;
        let auto = self.data_dir.join("postgresql.auto.conf");
        let mut text = fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={port} user={PG_USER} dbname=postgres application_name={slot}'\n\
             primary_slot_name = '{slot}'\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             {settings}\n",
            port = primary.port,
        ));
        self.write_server_file("postgresql.auto.conf", &text, owner)?;
        self.write_server_file("standby.signal", "", owner)?;
        primary.start_again()?;
        self.pg_ctl_start()?;
        self.psql("postgres", "SELECT 1")?;
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Runs one of the cluster's binaries as the server's OS user.
    fn run_pg(&self, program: &str, args: &[&OsStr]) -> Result<Output, LocalPgError> {
        let mut cmd = self.run_as.command(&self.bin_dir.join(program), args);
        // The server user may not be able to enter our working directory.
        cmd.current_dir(&self.root);
        let description = format!(
            "{program} {}{}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            self.run_as.suffix()
        );
        run(cmd, description)
    }

    fn pg_ctl_start(&self) -> Result<(), LocalPgError> {
        let log = self.log_path();
        let log_offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let data = self.data_dir.as_os_str();
        let result = self.run_pg(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-D".as_ref(),
                data,
                // Server output goes to the file, not to our pipes (which the
                // postmaster would otherwise hold open forever).
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
                "-s".as_ref(),
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(LocalPgError::CommandFailed {
                command,
                status,
                output,
            }) => Err(LocalPgError::StartFailed {
                port: self.port,
                command,
                status,
                output,
                log_tail: read_tail(&log, log_offset),
                log,
            }),
            Err(e) => Err(e),
        }
    }

    /// Makes `postgresql.conf` include our settings file.
    /// (Appending keeps the file's owner, the server user.)
    fn include_settings(&self) -> Result<(), LocalPgError> {
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| LocalPgError::io("open", &conf, e))?;
        writeln!(
            file,
            "\n# added by sluice::localpg\ninclude '{SETTINGS_FILE}'"
        )
        .map_err(|e| LocalPgError::io("write", &conf, e))?;
        Ok(())
    }

    /// Writes a file into the data directory, mode 0600, owned by the
    /// server's user (the server refuses a key file anyone else can read).
    fn write_server_file(
        &self,
        name: &str,
        text: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), LocalPgError> {
        let path = self.data_dir.join(name);
        fs::write(&path, text).map_err(|e| LocalPgError::io("write", &path, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| LocalPgError::io("chmod", &path, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| LocalPgError::io("chown", &path, e))?;
        }
        Ok(())
    }

    fn write_settings(&self, owner: Option<(u32, u32)>) -> Result<(), LocalPgError> {
        let tls = if self.tls {
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
        } else {
            ""
        };
        let text = format!(
            "# written by sluice::localpg (throwaway cluster)\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = {socket_dir}\n\
             wal_level = logical\n\
             max_replication_slots = 64\n\
             max_prepared_transactions = 10\n\
             max_wal_senders = 64\n\
             max_connections = 200\n\
             fsync = on\n\
             synchronous_commit = on\n\
             shared_buffers = 128MB\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             wal_sender_timeout = 60s\n\
             {tls}",
            port = self.port,
            socket_dir = conf_quote(&self.root.to_string_lossy()),
        );
        self.write_server_file(SETTINGS_FILE, &text, owner)
    }

    /// A detached `sh` that waits for this process to exit, then stops the
    /// server (immediate) and removes the temp dir. Its own process group,
    /// so a Ctrl-C meant for us does not kill it first; it ignores SIGINT and
    /// SIGHUP too.
    fn spawn_watchdog(&self) -> Result<Child, LocalPgError> {
        let stop = self.run_as.shell_line(
            &self.bin_dir.join("pg_ctl"),
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
                "-s".as_ref(),
            ],
        );
        let script = format!(
            "trap '' INT HUP\n\
             while kill -0 {pid} 2>/dev/null; do sleep 1; done\n\
             if [ -f {pidfile} ]; then {stop} >/dev/null 2>&1; fi\n\
             rm -rf {root}\n",
            pid = std::process::id(),
            pidfile = sh_quote(&self.data_dir.join("postmaster.pid").to_string_lossy()),
            root = sh_quote(&self.root.to_string_lossy()),
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        clean_env(&mut cmd);
        cmd.spawn().map_err(|error| LocalPgError::Spawn {
            command: "/bin/sh -c <watchdog>".to_owned(),
            error,
        })
    }

    /// Stops the server (immediate), removes the temp dir, ends the
    /// watchdog. Runs once; never panics.
    fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.data_dir.join("postmaster.pid").exists() {
            let data = self.data_dir.as_os_str();
            let _ = self.run_pg(
                "pg_ctl",
                &[
                    "stop".as_ref(),
                    "-D".as_ref(),
                    data,
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    PG_CTL_TIMEOUT_SECS.as_ref(),
                    "-s".as_ref(),
                ],
            );
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            if e.kind() != io::ErrorKind::NotFound {
                let _ = writeln!(
                    io::stderr(),
                    "sluice::localpg: could not remove {}: {e}",
                    self.root.display()
                );
            }
        }
        let mut watchdog = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPg {
    /// `pg_ctl stop -m immediate`, then removes the temp dir.
    fn drop(&mut self) {
        self.teardown();
    }
}

static SHARED: OnceLock<Result<LocalPg, String>> = OnceLock::new();

/// A process-wide cluster for a test binary: started on first use, torn
/// down when the process exits: by an `atexit` handler on a normal exit, and
/// by the cluster's watchdog (within about a second) if the process is
/// killed. Panics with a clear message if the cluster cannot start (every
/// later call panics with the same message, without retrying).
pub fn shared() -> &'static LocalPg {
    let started = SHARED.get_or_init(|| {
        let started = LocalPg::start().map_err(|e| e.to_string());
        if started.is_ok() {
            register_exit_cleanup();
        }
        started
    });
    match started {
        Ok(pg) => pg,
        Err(e) => panic!("cannot start the shared throwaway postgres cluster for tests: {e}"),
    }
}

extern "C" {
    /// The C library's `atexit` (libc is linked by std on every unix).
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn teardown_shared_at_exit() {
    // Unwinding out of an extern "C" fn aborts; teardown does not panic, but
    // be sure.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(pg)) = SHARED.get() {
            pg.teardown();
        }
    });
}

/// Statics are never dropped: stop the shared cluster when the process
/// exits normally (the test harness returning or calling `exit`). If
/// registering fails, the watchdog still cleans up.
fn register_exit_cleanup() {
    // SAFETY: `atexit` only stores the function pointer; the callback is a
    // plain `extern "C" fn()` that catches any panic and touches only a
    // 'static.
    unsafe {
        atexit(teardown_shared_at_exit);
    }
}

/// Runs `cmd` to completion, stdin closed, output captured; a non-zero exit
/// is an error carrying the output's tail.
fn run(mut cmd: Command, description: String) -> Result<Output, LocalPgError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|error| LocalPgError::Spawn {
            command: description.clone(),
            error,
        })?;
    check(output, description)
}

fn check(output: Output, description: String) -> Result<Output, LocalPgError> {
    if output.status.success() {
        return Ok(output);
    }
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &output.stderr
    } else {
        &output.stdout
    };
    Err(LocalPgError::CommandFailed {
        command: description,
        status: output.status.to_string(),
        output: tail(&String::from_utf8_lossy(text)),
    })
}

/// The last [`TAIL_LINES`] non-empty lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "no output".to_owned();
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The tail of what was appended to `path` after byte `offset`.
fn read_tail(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => tail(&text),
        Err(e) => format!("(could not read it: {e})"),
    }
}

/// Drops every `PG*` variable (PGDATA, PGPORT, PGOPTIONS, PGSERVICE, …) so the
/// caller's environment cannot redirect or reconfigure our commands, and
/// asks for untranslated messages.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// `'…'` with embedded quotes escaped, for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shell_words(program: &Path, args: &[&OsStr]) -> String {
    std::iter::once(sh_quote(&program.to_string_lossy()))
        .chain(args.iter().map(|a| sh_quote(&a.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A string literal for `postgresql.conf`.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A value for a libpq `key=value` connection string.
fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A port nothing listens on right now (bound, then released; racy in
/// principle, hence the retries in [`LocalPg::start`]).
fn free_port() -> Result<u16, LocalPgError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalPgError::FreePort)?;
    let port = listener
        .local_addr()
        .map_err(LocalPgError::FreePort)?
        .port();
    Ok(port)
}

/// The effective uid is 0 (from `/proc/self/status`, else `id -u`).
fn running_as_root() -> bool {
    let from_proc = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
    });
    let euid = from_proc.or_else(|| {
        let out = Command::new("id").arg("-u").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    euid.as_deref() == Some("0")
}

/// uid and gid of the `postgres` OS user (through `id`, so NSS users count).
fn postgres_ids() -> Result<(u32, u32), LocalPgError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, PG_USER]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(LocalPgError::NoPostgresUser),
    }
}

fn find_user_switch() -> Result<RunAs, LocalPgError> {
    if let Some(runuser) = find_program("runuser") {
        return Ok(RunAs::Runuser(runuser));
    }
    if let Some(su) = find_program("su") {
        return Ok(RunAs::Su(su));
    }
    Err(LocalPgError::NoUserSwitch)
}

/// `name` on PATH, or in the sbin/bin dirs a non-login PATH may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which of `names` `dir` lacks (or holds but cannot execute).
fn missing_binaries(dir: &Path, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .copied()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect()
}

/// Major version reported by `dir/initdb --version`.
fn major_version(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("initdb"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "initdb (PostgreSQL) 15.6 (Debian 15.6-0+deb12u1)"
    let rest = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `Ok(())` when `dir` holds the server binaries of a recent enough major.
fn check_bin_dir(dir: &Path) -> Result<(), String> {
    let missing = missing_binaries(dir, &SERVER_BINARIES);
    if !missing.is_empty() {
        return Err(format!("{} lacks {}", dir.display(), missing.join(", ")));
    }
    match major_version(dir) {
        Some(major) if major >= MIN_MAJOR => Ok(()),
        Some(major) => Err(format!(
            "{} holds postgresql {major}, older than {MIN_MAJOR}",
            dir.display()
        )),
        None => Err(format!(
            "{}/initdb --version reported no postgresql version",
            dir.display()
        )),
    }
}

/// `SLUICE_PG_BIN` (the dir itself or its `bin/`; when set, nothing else is
/// tried), else `/usr/lib/postgresql/<major>/bin` with the highest major
/// >= 14, else the directory of `initdb` on `PATH`.
fn find_bin_dir() -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        let reason = match check_bin_dir(&dir) {
            Ok(()) => return Ok(absolute(dir)),
            Err(reason) => reason,
        };
        let sub = dir.join("bin");
        if sub.is_dir() && check_bin_dir(&sub).is_ok() {
            return Ok(absolute(sub));
        }
        return Err(LocalPgError::BinariesNotFound {
            detail: format!("SLUICE_PG_BIN is set and {reason}"),
        });
    }

    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&major| major >= MIN_MAJOR)
                .collect()
        })
        .unwrap_or_default();
    majors.sort_unstable_by(|a, b| b.cmp(a));
    for major in majors {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        if missing_binaries(&dir, &SERVER_BINARIES).is_empty() {
            return Ok(dir);
        }
    }

    let mut detail = format!("no postgresql {MIN_MAJOR}+ in /usr/lib/postgresql/*/bin");
    match find_on_path("initdb") {
        Some(initdb) => {
            let dir = fs::canonicalize(&initdb)
                .unwrap_or(initdb)
                .parent()
                .map(Path::to_owned)
                .unwrap_or_default();
            match check_bin_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(reason) => detail.push_str(&format!(", and {reason}")),
            }
        }
        None => detail.push_str(" and no initdb on PATH"),
    }
    Err(LocalPgError::BinariesNotFound { detail })
}

/// Where `psql` and `pg_recvlogical` are taken from: the server's own
/// `bin_dir` when it holds both, else the highest-major
/// `/usr/lib/postgresql/<major>/bin` (>= 14) that does, else the directory
/// of `psql` on `PATH` when `pg_recvlogical` is there too.
fn find_client_dir(bin_dir: &Path) -> Result<PathBuf, LocalPgError> {
    if missing_binaries(bin_dir, &CLIENT_BINARIES).is_empty() {
        return Ok(bin_dir.to_owned());
    }
    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&major| major >= MIN_MAJOR)
                .collect()
        })
        .unwrap_or_default();
    majors.sort_unstable_by(|a, b| b.cmp(a));
    for major in majors {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        if missing_binaries(&dir, &CLIENT_BINARIES).is_empty() {
            return Ok(dir);
        }
    }
    // Debian's /usr/bin/psql is a wrapper script that picks a version; its
    // dir holds the pg_recvlogical wrapper too. Not resolved through links
    // for that reason.
    if let Some(dir) = find_on_path("psql").and_then(|p| p.parent().map(Path::to_owned)) {
        if missing_binaries(&dir, &CLIENT_BINARIES).is_empty() {
            return Ok(dir);
        }
    }
    Err(LocalPgError::ClientsNotFound {
        detail: format!(
            "{} lacks {}, and neither /usr/lib/postgresql/*/bin (major {MIN_MAJOR}+) nor PATH holds both",
            bin_dir.display(),
            missing_binaries(bin_dir, &CLIENT_BINARIES).join(", ")
        ),
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn absolute(dir: PathBuf) -> PathBuf {
    fs::canonicalize(&dir).unwrap_or(dir)
}

/// A new directory of our own, mode 0700, owned by `owner` when given
/// (under `/tmp` then, which every user can traverse; otherwise under the
/// temp dir, unless its path is too long for a unix socket).
fn make_temp_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, LocalPgError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut base = std::env::temp_dir();
    // sun_path holds 107 bytes: "<dir>/.s.PGSQL.65535" must fit.
    if owner.is_some() || base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_error = None;
    for _ in 0..100 {
        let name = format!(
            "sluice-pg-{}-{:x}-{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // The umask cannot widen 0700, but be explicit.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| LocalPgError::io("chmod", &dir, e))?;
                if let Some((uid, gid)) = owner {
                    if let Err(e) = std::os::unix::fs::chown(&dir, Some(uid), Some(gid)) {
                        let _ = fs::remove_dir(&dir);
                        return Err(LocalPgError::io("chown", &dir, e));
                    }
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(LocalPgError::io("create", &dir, e)),
        }
    }
    Err(LocalPgError::io(
        "create a temp dir under",
        &base,
        last_error.unwrap_or_else(|| io::Error::other("no attempt made")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn starts_serves_restarts_and_cleans_up() {
        let started = Instant::now();
        let pg =
            LocalPg::start().expect("start a throwaway cluster (run scripts/ensure-postgres.sh)");
        eprintln!("LocalPg::start took {:?}", started.elapsed());
        let root = pg.root.clone();
        assert!(pg.data_dir().join("PG_VERSION").is_file());
        assert!(pg.bin_dir().join("initdb").is_file());
        assert!(pg.client_bin_dir().join("psql").is_file());
        assert_eq!(
            pg.url("x"),
            format!("postgres://postgres@127.0.0.1:{}/x", pg.port())
        );

        let created = Instant::now();
        let db = pg.create_database("localpg_test").expect("create database");
        eprintln!("create_database took {:?}", created.elapsed());
        assert!(db.starts_with("localpg_test_"), "{db}");
        assert_eq!(pg.psql(&db, "SHOW wal_level").unwrap(), "logical");
        assert_eq!(
            pg.psql(&db, "SHOW fsync; SHOW max_replication_slots")
                .unwrap(),
            "on\n64"
        );
        assert!(matches!(
            pg.create_database("Bad-Prefix"),
            Err(LocalPgError::InvalidPrefix { .. })
        ));
        let err = pg.psql(&db, "SELECT * FROM no_such_table").unwrap_err();
        assert!(err.to_string().contains("no_such_table"), "{err}");

        pg.psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
            .unwrap();
        let port = pg.port();
        let restarted = Instant::now();
        pg.restart().expect("restart");
        eprintln!("restart took {:?}", restarted.elapsed());
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql(&db, "SELECT x FROM t").unwrap(), "42");

        drop(pg);
        assert!(!root.exists(), "{} left behind", root.display());
    }

    /// The settings file is valid on this major: every line of it is a
    /// setting the server knows and applied; and the version is told right.
    #[test]
    fn every_setting_is_applied_and_the_version_is_known() {
        let pg =
            LocalPg::start().expect("start a throwaway cluster (run scripts/ensure-postgres.sh)");
        println!(
            "server: {} (major {}); server binaries {}, clients {}",
            pg.psql("postgres", "SELECT version()").unwrap(),
            pg.major(),
            pg.bin_dir().display(),
            pg.client_bin_dir().display()
        );
        assert!(pg.major() >= MIN_MAJOR, "{}", pg.major());
        assert_eq!(
            pg.psql("postgres", "SHOW server_version_num").unwrap(),
            pg.version_num().to_string()
        );
        assert_eq!(
            Some(pg.major()),
            major_version(pg.bin_dir()),
            "the server is initdb's major"
        );
        assert_eq!(
            pg.psql("postgres", "SHOW max_prepared_transactions")
                .unwrap(),
            "10"
        );
        let settings = pg
            .psql(
                "postgres",
                &format!(
                    "SELECT name, applied, coalesce(error, '') FROM pg_file_settings \
                     WHERE sourcefile LIKE '%/{SETTINGS_FILE}' ORDER BY seqno"
                ),
            )
            .unwrap();
        let lines: Vec<&str> = settings.lines().collect();
        assert!(lines.len() >= 14, "{settings}");
        for line in lines {
            assert!(
                line.ends_with("|t|"),
                "a setting of {SETTINGS_FILE} the server did not apply (name|applied|error): {line}"
            );
        }
    }

    /// What Sluice needs from the cluster, on every major: a pgoutput slot
    /// decodes committed rows, a prepared transaction once it is committed,
    /// and nothing of one rolled back.
    #[test]
    fn a_pgoutput_slot_decodes_commits_and_prepared_transactions() {
        let pg =
            LocalPg::start().expect("start a throwaway cluster (run scripts/ensure-postgres.sh)");
        let db = pg.create_database("localpg_repl").expect("create database");
        pg.psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE PUBLICATION p FOR TABLE t;
             SELECT pg_create_logical_replication_slot('localpg_repl', 'pgoutput');
             INSERT INTO t VALUES (1, 'one'), (2, 'two');
             BEGIN; INSERT INTO t VALUES (3, 'three'); PREPARE TRANSACTION 'localpg_2pc';
             BEGIN; INSERT INTO t VALUES (4, 'four'); PREPARE TRANSACTION 'localpg_gone';
             COMMIT PREPARED 'localpg_2pc';
             ROLLBACK PREPARED 'localpg_gone';",
        )
        .expect("write, also through prepared transactions");
        // pgoutput protocol 1's message types, a letter each: the first
        // transaction is Begin, Relation, Insert, Insert, Commit; the
        // committed prepared one (decoded at COMMIT PREPARED, as protocol 1
        // has no two-phase messages) Begin, Insert, Commit; the rolled-back
        // one nothing.
        let kinds = pg
            .psql(
                &db,
                "SELECT string_agg(chr(get_byte(data, 0)), '' ORDER BY ordinality) \
                 FROM pg_logical_slot_get_binary_changes('localpg_repl', NULL, NULL, \
                      'proto_version', '1', 'publication_names', 'p') WITH ORDINALITY",
            )
            .expect("read the slot");
        assert_eq!(kinds, "BRIICBIC", "postgresql {}", pg.major());
        pg.psql(&db, "SELECT pg_drop_replication_slot('localpg_repl')")
            .expect("drop the slot");
    }
}
