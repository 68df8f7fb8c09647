//! A private postfix for the relay tests: its own configuration directory, queue, data
//! directory, maildir and Cyrus SASL database (sasldb) inside a test's temp dir, started with
//! `postfix -c DIR start-fg` and stopped by the master's pid. Every port is on 127.0.0.1:
//!
//! - `smtp`: STARTTLS offered (`smtpd_tls_security_level = may`), no AUTH;
//! - `smtps`: implicit TLS (`smtpd_tls_wrappermode = yes`);
//! - `submission`: STARTTLS, `AUTH PLAIN`/`LOGIN` only after it (`smtpd_tls_auth_only`), and
//!   only logged-in clients may send.
//!
//! The certificate is a leaf of a CA made by the test (rcgen), or of another CA when a test
//! wants an untrusted relay. Mail for `example.it` goes to `mail/example.it/<user>/` (the
//! `virtual` agent, as `nobody`); unknown users there are accepted, then bounced (so a test
//! sees a DSN). Postfix needs root (its master binds and drops privileges): without root, or
//! without the binaries (`scripts/test.sh` installs `postfix` and `sasl2-bin`), a test FAILS.

#![allow(dead_code)]

use super::peers::free_ports;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The login of the submission port.
pub const USER: &str = "plico";
/// Its password.
pub const PASSWORD: &str = "relay-test-password";
/// Where the tests' bounces go.
pub const BOUNCES: &str = "bounces@example.it";

/// How to set the relay up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Mailboxes of `example.it` (local parts) besides `bounces`.
    pub mailboxes: Vec<String>,
    /// Hide 8BITMIME from EHLO (`smtpd_discard_ehlo_keywords = 8bitmime`).
    pub no_8bitmime: bool,
    /// Sign the leaf with a CA other than [`Postfix::ca`] (an untrusted relay).
    pub untrusted_leaf: bool,
}

/// A running private postfix; stopped (SIGTERM to its master) when dropped.
pub struct Postfix {
    root: PathBuf,
    child: Child,
    /// STARTTLS offered, no AUTH.
    pub smtp: u16,
    /// Implicit TLS.
    pub smtps: u16,
    /// STARTTLS and AUTH required.
    pub submission: u16,
    /// PEM of the CA the tests trust (the leaf's, unless [`Options::untrusted_leaf`]).
    pub ca_pem: Vec<u8>,
    /// The file of [`Postfix::ca_pem`].
    pub ca_file: PathBuf,
    /// The CA that really signed the leaf (the same as `ca_file` unless untrusted).
    pub leaf_ca_file: PathBuf,
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/test.sh installs postfix and sasl2-bin)")
    });
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

fn ids_of(user: &str) -> (u32, u32) {
    let uid = run(Command::new("id").args(["-u", user]));
    let gid = run(Command::new("id").args(["-g", user]));
    let parse =
        |o: std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (parse(uid), parse(gid))
}

/// A CA (its PEM) and a leaf for 127.0.0.1 / localhost signed by it (cert and key PEM).
fn ca_and_leaf() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "relay test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "relay.test");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

impl Postfix {
    /// Configures and starts a private postfix under `dir` (made traversable for postfix's
    /// users), and waits until its three ports answer.
    pub async fn start(dir: &Path, options: &Options) -> Postfix {
        assert!(
            super::peers::is_root(),
            "the relay tests run a private postfix, whose master needs root"
        );
        let root = dir.join("postfix");
        for d in ["etc/sasl", "queue", "data", "mail"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in [dir, root.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(root.join("mail"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let (uid, gid) = ids_of("postfix");
        std::os::unix::fs::chown(root.join("data"), Some(uid), Some(gid)).unwrap();

        let (ca, leaf, key) = ca_and_leaf();
        let leaf_ca_file = root.join("leaf-ca.pem");
        std::fs::write(&leaf_ca_file, &ca).unwrap();
        let ca_pem = if options.untrusted_leaf {
            ca_and_leaf().0
        } else {
            ca
        };
        let ca_file = root.join("trusted-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        std::fs::write(root.join("leaf.pem"), leaf).unwrap();
        std::fs::write(root.join("leaf.key"), key).unwrap();
        std::fs::set_permissions(
            root.join("leaf.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();

        let mut boxes = options.mailboxes.clone();
        boxes.push("bounces".into());
        let vmailbox: String = boxes
            .iter()
            .map(|b| format!("{b}@example.it example.it/{b}/\n"))
            .collect();
        std::fs::write(root.join("etc/vmailbox"), vmailbox).unwrap();

        let p = free_ports(3);
        let (smtp, smtps, submission) = (p[0], p[1], p[2]);
        let r = root.display();
        let (nobody_uid, nobody_gid) = ids_of("nobody");
        let discard = if options.no_8bitmime {
            "smtpd_discard_ehlo_keywords = 8bitmime\n"
        } else {
            ""
        };
        std::fs::write(
            root.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test
mydomain = relay.test
myorigin = relay.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {r}/postfix.log
maillog_file_prefixes = {r}
virtual_mailbox_domains = example.it
virtual_mailbox_base = {r}/mail
virtual_mailbox_maps = texthash:{r}/etc/vmailbox
virtual_uid_maps = static:{nobody_uid}
virtual_gid_maps = static:{nobody_gid}
virtual_minimum_uid = 1
smtpd_reject_unlisted_recipient = no
smtpd_tls_cert_file = {r}/leaf.pem
smtpd_tls_key_file = {r}/leaf.key
smtpd_tls_security_level = may
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {r}/etc/sasl
smtpd_sasl_local_domain = relay.test
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
{discard}"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/master.cf"),
            format!(
                "127.0.0.1:{smtp} inet n - n - - smtpd
127.0.0.1:{smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
127.0.0.1:{submission} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        // Debian's postfix reads the SASL application file from `$config_directory/sasl`
        // (whatever `cyrus_sasl_config_path` says): `etc/sasl/smtpd.conf`, sasldb beside it.
        std::fs::write(
            root.join("etc/sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n\
                 sasldb_path: {r}/etc/sasl/sasldb2\n"
            ),
        )
        .unwrap();
        let mut saslpasswd = Command::new("saslpasswd2")
            .args(["-p", "-c", "-u", "relay.test", "-f"])
            .arg(root.join("etc/sasl/sasldb2"))
            .arg(USER)
            .stdin(Stdio::piped())
            .spawn()
            .expect("saslpasswd2 (package sasl2-bin; scripts/test.sh installs it)");
        {
            use std::io::Write as _;
            let mut stdin = saslpasswd.stdin.take().unwrap();
            stdin.write_all(PASSWORD.as_bytes()).unwrap();
        }
        assert!(saslpasswd.wait().unwrap().success(), "saslpasswd2 failed");
        std::fs::set_permissions(
            root.join("etc/sasl/sasldb2"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let log = std::fs::File::create(root.join("start-fg.log")).unwrap();
        let child = Command::new("postfix")
            .arg("-c")
            .arg(root.join("etc"))
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postfix (scripts/test.sh installs it)");
        let mut postfix = Postfix {
            root,
            child,
            smtp,
            smtps,
            submission,
            ca_pem: ca_pem.into_bytes(),
            ca_file,
            leaf_ca_file,
        };
        postfix.wait_for_ports().await;
        postfix
    }

    async fn wait_for_ports(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.smtp, self.smtps, self.submission] {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("postfix exited early ({status}): {}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "postfix not listening on {port}: {}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// postfix's log and its start-up output.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.root.join(f)).unwrap_or_default();
        format!("{}\n{}", read("start-fg.log"), read("postfix.log"))
    }

    /// The messages delivered to `user@example.it` so far (raw bytes).
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let dir = self.root.join("mail/example.it").join(user).join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                out.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
        out
    }

    /// Waits until `user@example.it` has at least `n` messages (30 s at most), and returns them.
    pub async fn wait_for_messages(&self, user: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.messages(user);
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{user}: {} message(s), not {n}: {}",
                m.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // start-fg runs the master in the foreground under postfix-script: stop the master by
        // its pid, then reap the script.
        let pid_file = self.root.join("queue/pid/master.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
