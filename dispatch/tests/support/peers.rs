//! Real peers for dispatch's courier tests and benchmark: postfix's `smtp-sink` and Kannel
//! (bearerbox, the fake SMSC, smsbox), each started on free loopback ports and killed by pid
//! when its guard drops. Included with `#[path]` by `tests/couriers.rs` and
//! `benches/couriers.rs` (a subdirectory of `tests/` is not a test target of its own).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use dispatch::courier::sms::KannelConfig;
use secrecy::SecretString;
use std::net::TcpListener as StdListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fake SMSC of Debian's `kannel-extras`.
pub const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// A peer process, killed by pid when dropped.
pub struct Peer {
    name: &'static str,
    child: Child,
}

impl Peer {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Peer {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {name}: {e} (scripts/test.sh installs postfix, kannel and kannel-extras)")
            });
        Peer { name, child }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (all bound at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub async fn wait_for_port(port: u16, peer: &mut Peer) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        peer.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} not listening on {port}",
            peer.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `smtp-sink` on a free port, dumping each message into `dir/mail` (made writable for
/// `nobody`) when `dump` is set; its log goes to `dir`.
pub async fn smtp_sink(dir: &Path, dump: bool, extra: &[&str]) -> (Peer, u16) {
    let port = free_ports(1)[0];
    (smtp_sink_on(port, dir, dump, extra).await, port)
}

/// [`smtp_sink`] on a given port (to restart a sink where a courier already points).
pub async fn smtp_sink_on(port: u16, dir: &Path, dump: bool, extra: &[&str]) -> Peer {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = Command::new("smtp-sink");
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    if dump {
        cmd.arg("-d")
            .arg(format!("{}/%M.", dir.join("mail").display()));
    }
    cmd.args(extra).arg(format!("127.0.0.1:{port}")).arg("256");
    std::fs::create_dir_all(dir.join("mail")).unwrap();
    std::fs::set_permissions(dir.join("mail"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut peer = Peer::spawn("smtp-sink", &mut cmd, &dir.join("smtp-sink.log"));
    wait_for_port(port, &mut peer).await;
    peer
}

/// A running Kannel: bearerbox, the fake SMSC and smsbox, on free loopback ports. Its
/// `sendsms-user` denies numbers starting `+39000` ([`Kannel::DENIED_PREFIX`]: Kannel answers
/// 400, as for a number it refuses).
///
/// Configured as docs/delivery.md ("Kannel without codes in its logs") says, so that no SMS
/// text reaches its logs: smsbox at `log-level = 2` (its INFO line `sendsms … msg:<…>` holds
/// the text), no smsbox `access-log` (its fixed format holds the text), bearerbox's
/// `access-log` with an `access-log-format` without `%a`/`%b` (the text), and both boxes'
/// console output at `-v 2`.
pub struct Kannel {
    // Dropped in reverse order of start: smsbox, fakesmsc, bearerbox.
    _peers: Vec<Peer>,
    dir: PathBuf,
    pub sendsms_port: u16,
    scheme: &'static str,
}

/// The bearerbox access-log line of docs/delivery.md: everything of Kannel's default but the
/// text (`%a`/`%b`); `%L` is its length.
pub const KANNEL_ACCESS_LOG_FORMAT: &str = "%t %l [SMSC:%i] [SVC:%n] [ACT:%A] [BINF:%B] [FID:%F] [from:%p] [to:%P] [flags:%m:%c:%M:%C:%d] [len:%L] [udh:%U]";

impl Kannel {
    /// Numbers with this prefix are refused by the `sendsms-user`'s `black-list-regex`.
    pub const DENIED_PREFIX: &'static str = "+39000";

    /// Kannel with sendsms over plain HTTP.
    pub async fn start(dir: &Path) -> Kannel {
        Kannel::start_with(dir, None).await
    }

    /// Kannel with sendsms over HTTPS (smsbox's own TLS, `sendsms-port-ssl`) with this leaf
    /// certificate and key (PEM files).
    pub async fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Kannel {
        Kannel::start_with(dir, Some((cert, key))).await
    }

    async fn start_with(dir: &Path, tls: Option<(&Path, &Path)>) -> Kannel {
        let p = free_ports(4);
        let (admin, boxc, smsc, sendsms) = (p[0], p[1], p[2], p[3]);
        let d = dir.display();
        let (core_tls, sendsms_tls) = match tls {
            Some((cert, key)) => (
                format!(
                    "ssl-server-cert-file = {}\nssl-server-key-file = {}\n",
                    cert.display(),
                    key.display()
                ),
                "sendsms-port-ssl = true\n",
            ),
            None => (String::new(), ""),
        };
        let conf = format!(
            "group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = adm
status-password = adm
admin-allow-ip = 127.0.0.1
smsbox-port = {boxc}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-file = {d}/bearerbox.log
log-level = 1
access-log = {d}/bearerbox-access.log
access-log-format = \"{KANNEL_ACCESS_LOG_FORMAT}\"
dlr-storage = internal
{core_tls}
group = smsc
smsc = fake
smsc-id = fake
port = {smsc}
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {boxc}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
{sendsms_tls}log-file = {d}/smsbox.log
log-level = 2

group = sendsms-user
username = plico
password = s3cret
max-messages = 1
concatenation = false
black-list-regex = ^\\+39000
"
        );
        let conf_path = dir.join("kannel.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut peers = Vec::new();
        let mut bearerbox = Peer::spawn(
            "bearerbox",
            Command::new("bearerbox").args(["-v", "2"]).arg(&conf_path),
            &dir.join("bearerbox.out"),
        );
        wait_for_port(admin, &mut bearerbox).await;
        wait_for_port(smsc, &mut bearerbox).await;
        peers.push(bearerbox);
        peers.push(Peer::spawn(
            "fakesmsc",
            Command::new(FAKESMSC).args([
                "-H",
                "127.0.0.1",
                "-r",
                &smsc.to_string(),
                "-i",
                "0.1",
                "-m",
                "0",
                "123 234 text nop",
            ]),
            &dir.join("fakesmsc.log"),
        ));
        peers.push(Peer::spawn(
            "smsbox",
            Command::new("smsbox").args(["-v", "2"]).arg(&conf_path),
            &dir.join("smsbox.out"),
        ));
        // Ready when the admin status shows the smsbox on-line and the fake SMSC online.
        let status_url = format!("http://127.0.0.1:{admin}/status.txt?password=adm");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&status_url).await {
                let text = r.text().await.unwrap_or_default();
                if text.contains("(on-line") && text.contains("(online") {
                    break;
                }
            }
            for p in &mut peers {
                p.assert_running();
            }
            assert!(Instant::now() < deadline, "kannel did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for_port(sendsms, &mut peers[2]).await;
        Kannel {
            _peers: peers,
            dir: dir.to_owned(),
            sendsms_port: sendsms,
            scheme: if tls.is_some() { "https" } else { "http" },
        }
    }

    pub fn config(&self, password: &str) -> KannelConfig {
        KannelConfig::new(
            format!(
                "{}://127.0.0.1:{}/cgi-bin/sendsms",
                self.scheme, self.sendsms_port
            ),
            "plico",
            SecretString::from(password),
            "PLICO",
        )
    }

    pub fn fakesmsc_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fakesmsc.log")).unwrap_or_default()
    }

    /// Every log Kannel itself writes (log files, access log, console output), by file name:
    /// all of the directory but the fake SMSC's output (the phone's side, which shows the text
    /// by design) and the configuration.
    pub fn own_logs(&self) -> Vec<(String, String)> {
        let mut logs: Vec<(String, String)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                (name.ends_with(".log") || name.ends_with(".out")) && name != "fakesmsc.log"
            })
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (
                    name,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
                )
            })
            .collect();
        logs.sort();
        logs
    }
}
