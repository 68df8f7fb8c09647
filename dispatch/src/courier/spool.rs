//! The spool courier, for `--dev` only: each message becomes a file in a directory.
//!
//! # Security
//! **Insecure by design**: the files hold the codes in clear. They are created mode 0600 (the
//! directory 0700 when this courier creates it) and named by the SHA-256 of the job's
//! idempotency key (`<hex>.eml` / `<hex>.sms`), never by a code, a serial or a number; a
//! resend with the same key replaces the file (written to a temporary name, then renamed). The
//! message is built in a zeroizing buffer and written with `std::fs` on a blocking thread, so
//! no async I/O buffer keeps a copy.

use super::smtp::{message_id, mime_message};
use super::{ConfigError, Courier, Destination, Message, Outgoing, SendError, Sent};
use crate::plan::Channel;
use crate::secret::SecretBuf;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Writes messages, codes in clear, to files in a directory (`--dev`).
#[derive(Debug)]
pub struct InsecureSpoolCourier {
    dir: PathBuf,
    channel: Channel,
    from: String,
}

impl InsecureSpoolCourier {
    /// A spool for `channel` (`Email` or `Sms`) in `dir`, created 0700 if missing. `from` is
    /// the `From:` of spooled e-mails.
    ///
    /// # Errors
    /// [`ConfigError`] if the directory cannot be created or the channel is not remote.
    pub fn new(
        dir: impl Into<PathBuf>,
        channel: Channel,
        from: impl Into<String>,
    ) -> Result<InsecureSpoolCourier, ConfigError> {
        if !matches!(channel, Channel::Email | Channel::Sms) {
            return Err(ConfigError::new("spool.channel", "email or sms only"));
        }
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ConfigError::new("spool.dir", format!("cannot create: {}", e.kind())))?;
        Ok(InsecureSpoolCourier {
            dir,
            channel,
            from: from.into(),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait::async_trait]
impl Courier for InsecureSpoolCourier {
    fn channel(&self) -> Channel {
        self.channel
    }

    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError> {
        let name = message.key.digest_hex();
        let (file, content) = match (&message.message, &message.destination) {
            (Message::Email(email), Destination::Email(to)) => {
                let id = message_id(&message.key, "plico.invalid");
                let content = mime_message(
                    &self.from,
                    to,
                    &id,
                    email,
                    SystemTime::now(),
                    super::smtp::BodyEncoding::EightBit,
                )?;
                (format!("{name}.eml"), content)
            }
            (Message::Sms(sms), Destination::Phone(to)) => {
                let mut content = SecretBuf::with_capacity(64 + sms.text.len());
                content.extend(b"To: ");
                content.extend(to.as_bytes());
                content.extend(b"\n\n");
                content.extend(sms.text.expose_secret().as_bytes());
                content.extend(b"\n");
                (format!("{name}.sms"), content)
            }
            _ => {
                return Err(SendError::permanent(
                    "spool: message and destination differ",
                ))
            }
        };
        let dir = self.dir.clone();
        let written = file.clone();
        tokio::task::spawn_blocking(move || write_0600(&dir, &written, &content))
            .await
            .map_err(|_| SendError::temporary("spool: writer task failed"))?
            .map_err(|e| SendError::temporary(format!("spool: write failed: {}", e.kind())))?;
        Ok(Sent {
            peer_id: file,
            at: SystemTime::now(),
        })
    }
}

fn write_0600(dir: &Path, name: &str, content: &SecretBuf) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.expose_secret())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))
}
