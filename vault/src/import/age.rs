//! age decryption of manufacturer files sent to plico's import recipient.
//!
//! A manufacturer encrypts each PIN/PUK file with [age](https://age-encryption.org/v1) to the
//! X25519 recipient that plico publishes (`age1…`, [`ImportIdentity::recipient`]), with the
//! `age` command-line tool or any other implementation, binary or ASCII-armoured (`age -a`).
//! This module opens such a file as a stream: [`ImportIdentity::decrypt`] reads and checks the
//! age header, then hands back a [`Decrypted`] reader that yields the plaintext chunk by chunk
//! for the parser ([`super::parse`]). A file of hundreds of megabytes is never held in memory:
//! the reader keeps one 64 KiB chunk of plaintext at a time, in a zeroizing buffer.
//!
//! # How the identity is kept
//!
//! The X25519 secret of the import recipient is the 32 bytes of a data key of purpose
//! [`KeyPurpose::Import`](crate::hsm::KeyPurpose::Import), made by the HSM and stored only
//! wrapped under a KEK term, like every data key ([`crate::keyring`]). To decrypt a file the
//! caller unwraps that key, builds an [`ImportIdentity`] from it and calls
//! [`ImportIdentity::decrypt`]. The identity is needed only to open the header: the returned
//! reader holds the file's own payload key, not the identity, so the identity and the
//! [`DataKey`] should be dropped as soon as `decrypt` returns; both are zeroized on drop. The
//! public recipient can be shown and published; it is derived from the key and never stored
//! apart from it.
//!
//! # Integrity
//!
//! age authenticates the header with a MAC and the payload with the STREAM construction
//! (ChaCha20-Poly1305 over 64 KiB chunks, the last chunk flagged): a payload that was altered,
//! reordered, or cut — even exactly at a chunk boundary — makes the reader return an
//! [`std::io::Error`] instead of a short plaintext. A caller must therefore treat the plaintext
//! as accepted only once the reader has returned end of file without error; the import stages
//! everything it reads and commits only after that.
//!
//! # Bounded memory on hostile input
//!
//! Before the header is parsed, at most [`MAX_HEADER_BYTES`] are read (the age crate would
//! otherwise buffer a header line of any length), and an armoured file may not have a line
//! longer than [`MAX_ARMOR_LINE`]. Binary input skips the armour decoder altogether.
//!
//! # Security
//! Errors name what is wrong with the file (not age, damaged header, not encrypted to plico,
//! truncated or altered payload) and never contain key material or bytes of the file.
//! [`ImportIdentity`] has a redacted `Debug`, no `Display`, no `Serialize`, and is not `Clone`.

use crate::error::{Error, Result};
use crate::secret::{DataKey, KEY_LEN};
use ::age::armor::{ArmoredReadError, ArmoredReader};
use ::age::stream::StreamReader;
use ::age::{x25519, DecryptError, Decryptor};
use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, ErrorKind, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

/// First line of a binary age file, up to the version (`age-encryption.org/v1`).
const BINARY_MAGIC: &[u8] = b"age-encryption.org/";

/// First line of an ASCII-armoured age file.
const ARMOR_MARKER: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// How many leading bytes [`is_age`] needs to recognise an age file of either form.
pub const SNIFF_LEN: usize = ARMOR_MARKER.len();

/// The most bytes read from the file before its age header (and nonce) has been parsed.
/// A header to a handful of recipients is a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The longest line, in bytes, accepted in an armoured file (real armour lines are 64
/// characters).
pub const MAX_ARMOR_LINE: usize = 4096;

/// Size of one age STREAM chunk of plaintext.
const CHUNK_LEN: usize = 64 * 1024;

/// Human-readable part of an age X25519 secret key, in the lower case bech32 checksums use.
const SECRET_KEY_HRP: &str = "age-secret-key-";

/// True when `prefix`, the first bytes of a stream, starts an age file: binary
/// (`age-encryption.org/v1`) or ASCII-armoured (`-----BEGIN AGE ENCRYPTED FILE-----`).
///
/// Give it at least [`SNIFF_LEN`] bytes (fewer are enough for the binary form, which needs
/// 19). Any age version is recognised, so that a file from a newer age is reported as such by
/// [`ImportIdentity::decrypt`] rather than parsed as clear text. Leading whitespace is not
/// skipped: the armour must start at the first byte, as [`ImportIdentity::decrypt`] requires.
pub fn is_age(prefix: &[u8]) -> bool {
    prefix.starts_with(BINARY_MAGIC) || prefix.starts_with(ARMOR_MARKER)
}

/// The age X25519 identity of plico's import recipient, built from the import data key.
///
/// # Security
/// Holds the X25519 secret, which zeroizes itself on drop. `Debug` shows only the public
/// recipient; no `Display`, no `Serialize`, not `Clone`. Keep it only while a file header is
/// being opened.
pub struct ImportIdentity {
    identity: x25519::Identity,
    recipient: String,
}

impl ImportIdentity {
    /// Builds the identity whose X25519 secret is the 32 bytes of `key`, which must be the
    /// data key of purpose [`KeyPurpose::Import`](crate::hsm::KeyPurpose::Import) (the HSM
    /// binds the purpose when it unwraps the key; a `DataKey` does not carry it).
    ///
    /// # Errors
    /// [`Error::Provider`] if the age library refuses the encoded key, which would be a bug:
    /// every 32-byte string is an X25519 secret.
    ///
    /// # Security
    /// The key is handed to the age library as its bech32 text form
    /// (`AGE-SECRET-KEY-1…`), the only constructor it offers; that text lives in a zeroizing
    /// buffer, allocated once at its final size, and is wiped before this returns.
    pub fn from_data_key(key: &DataKey) -> Result<ImportIdentity> {
        let encoded = secret_key_text(key.expose_secret());
        let identity = x25519::Identity::from_str(&encoded)
            .map_err(|_| Error::Provider("the import key does not encode as an age identity"))?;
        let recipient = identity.to_public().to_string();
        Ok(ImportIdentity {
            identity,
            recipient,
        })
    }

    /// The public `age1…` recipient that manufacturers encrypt to. Not secret.
    pub fn recipient(&self) -> String {
        self.recipient.clone()
    }

    /// Opens an age file (binary or ASCII-armoured) encrypted to this identity, and returns a
    /// reader of its plaintext.
    ///
    /// Reads the header (and no more than [`MAX_HEADER_BYTES`] for it) before returning; the
    /// payload is decrypted as the reader is read. The reader does not borrow `self`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the problem: the stream is not an age file, the file ends
    /// inside the header, the header or its armour is damaged or was altered, the file is
    /// encrypted to other recipients (or with a passphrase) and not to plico's import
    /// recipient, or it uses an age format version plico does not know. [`Error::Storage`] if
    /// `reader` itself fails. Problems in the payload surface later, from the reader, as
    /// [`std::io::Error`]s (see [`Decrypted`]).
    pub fn decrypt<R: Read>(&self, mut reader: R) -> Result<Decrypted<R>> {
        let mut sniff = Zeroizing::new([0u8; SNIFF_LEN]);
        let got = read_up_to(&mut reader, &mut sniff[..]).map_err(|e| header_error(&e))?;
        let prefix = &sniff[..got];
        if got == 0 {
            return Err(Error::Invalid(
                "the file is empty, not an age file".to_string(),
            ));
        }
        if !is_age(prefix) {
            // A clear file uploaded by mistake starts with codes: say nothing of its content.
            if got < SNIFF_LEN
                && (BINARY_MAGIC.starts_with(prefix) || ARMOR_MARKER.starts_with(prefix))
            {
                return Err(Error::Invalid(
                    "the file ends inside the age header".to_string(),
                ));
            }
            return Err(Error::Invalid(
                "the file is not encrypted with age: it starts with neither the age header \
                 nor the age armour"
                    .to_string(),
            ));
        }
        let armored = prefix.starts_with(ARMOR_MARKER);
        // The sniffed bytes are the start of an age header: public, safe to copy.
        let head = Cursor::new(*sniff).take(got as u64);
        let header_done = Arc::new(AtomicBool::new(false));
        let bounded = Bounded {
            inner: head.chain(reader),
            header_done: Arc::clone(&header_done),
            header_left: MAX_HEADER_BYTES,
            armored,
            line: 0,
        };
        let source = if armored {
            Source::Armored(ArmoredReader::new(bounded))
        } else {
            Source::Binary(BufReader::new(bounded))
        };
        let decryptor = Decryptor::new_buffered(source)
            .map_err(|e| decrypt_error(e, &self.recipient, false))?;
        header_done.store(true, Ordering::Release);
        let passphrase = decryptor.is_scrypt();
        let stream = decryptor
            .decrypt(std::iter::once(&self.identity as &dyn ::age::Identity))
            .map_err(|e| decrypt_error(e, &self.recipient, passphrase))?;
        Ok(Decrypted {
            stream,
            buf: Zeroizing::new(vec![0u8; CHUNK_LEN]),
            pos: 0,
            filled: 0,
            failed: None,
        })
    }
}

impl fmt::Debug for ImportIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ImportIdentity(<redacted>, recipient {})",
            self.recipient
        )
    }
}

/// The plaintext of an age file, decrypted as it is read: a [`BufRead`] for the parser.
///
/// End of file comes only after the final chunk of the file verified. A payload that is
/// truncated, altered or followed by extra bytes gives an [`std::io::Error`] instead —
/// `UnexpectedEof` for a file cut at a chunk boundary, `InvalidData` otherwise — whose message
/// says what is wrong. After an error every later read fails the same way.
///
/// # Security
/// Plaintext is held here in one zeroizing 64 KiB buffer, and inside the age crate in a
/// zeroizing chunk (its AEAD returns a `Vec` first, so a freed copy may stay on the heap: best
/// effort, as with any AEAD API that allocates). `Debug` is redacted.
pub struct Decrypted<R: Read> {
    stream: StreamReader<Source<R>>,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    filled: usize,
    failed: Option<(ErrorKind, String)>,
}

impl<R: Read> BufRead for Decrypted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if self.pos >= self.filled {
            match self.stream.read(&mut self.buf[..]) {
                Ok(n) => {
                    self.pos = 0;
                    self.filled = n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    self.pos = 0;
                    self.filled = 0;
                    let (kind, message) = payload_problem(&e);
                    self.failed = Some((kind, message.clone()));
                    return Err(io::Error::new(kind, message));
                }
            }
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = self.pos.saturating_add(amt).min(self.filled);
    }
}

impl<R: Read> Read for Decrypted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> fmt::Debug for Decrypted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.failed.is_some() {
            "failed"
        } else {
            "open"
        };
        write!(f, "Decrypted(<redacted>, {state})")
    }
}

/// The ciphertext source under age's decryptor: the armour decoder only for armoured files.
enum Source<R: Read> {
    Binary(BufReader<Bounded<R>>),
    Armored(ArmoredReader<BufReader<Bounded<R>>>),
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Binary(r) => r.read(buf),
            Source::Armored(r) => r.read(buf),
        }
    }
}

impl<R: Read> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Source::Binary(r) => r.fill_buf(),
            Source::Armored(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, amt: usize) {
        match self {
            Source::Binary(r) => r.consume(amt),
            Source::Armored(r) => r.consume(amt),
        }
    }
}

/// The raw file, with the sniffed bytes put back in front.
type Sniffed<R> = io::Chain<io::Take<Cursor<[u8; SNIFF_LEN]>>, R>;

/// Caps what a hostile file can make the age crate buffer: the header's length, and the
/// length of an armour line.
struct Bounded<R> {
    inner: Sniffed<R>,
    /// Set once age has parsed the header and nonce.
    header_done: Arc<AtomicBool>,
    header_left: usize,
    armored: bool,
    /// Bytes since the last newline (armoured files only).
    line: usize,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let in_header = !self.header_done.load(Ordering::Acquire);
        let want = if in_header {
            if self.header_left == 0 {
                return Err(Limit::Header.into());
            }
            buf.len().min(self.header_left)
        } else {
            buf.len()
        };
        let n = self.inner.read(&mut buf[..want])?;
        if in_header {
            self.header_left -= n;
        }
        if self.armored {
            for (i, piece) in buf[..n].split(|b| *b == b'\n').enumerate() {
                // The first piece continues the line of the previous read.
                self.line = if i == 0 {
                    self.line + piece.len()
                } else {
                    piece.len()
                };
                if self.line > MAX_ARMOR_LINE {
                    return Err(Limit::ArmorLine.into());
                }
            }
        }
        Ok(n)
    }
}

/// A bound of [`Bounded`] was crossed; carried inside an `io::Error` through the age crate.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Header,
    ArmorLine,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Header => write!(
                f,
                "the age header is longer than {} KiB",
                MAX_HEADER_BYTES / 1024
            ),
            Limit::ArmorLine => write!(
                f,
                "the age armour has a line longer than {MAX_ARMOR_LINE} bytes"
            ),
        }
    }
}

impl std::error::Error for Limit {}

impl From<Limit> for io::Error {
    fn from(limit: Limit) -> Self {
        io::Error::new(ErrorKind::InvalidData, limit)
    }
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What an I/O error from the layers under the decryptor means, if it is a problem of the
/// file's format (a crossed bound or damaged armour) rather than of reading it.
fn format_problem(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    if let Some(limit) = inner.downcast_ref::<Limit>() {
        return Some(limit.to_string());
    }
    // age's armour messages describe the armour's shape, never its content.
    inner
        .downcast_ref::<ArmoredReadError>()
        .map(|a| format!("the age armour is damaged: {a}"))
}

/// Maps an I/O error met while reading the header.
fn header_error(e: &io::Error) -> Error {
    if let Some(message) = format_problem(e) {
        return Error::Invalid(message);
    }
    match e.kind() {
        ErrorKind::UnexpectedEof => Error::Invalid("the file ends inside the age header".into()),
        ErrorKind::InvalidData => Error::Invalid("the age header is damaged".into()),
        _ => Error::Storage(format!("cannot read the age file: {e}")),
    }
}

/// Maps age's header and key errors. Never uses age's own `Display`, which is localised and
/// may change between versions.
fn decrypt_error(e: DecryptError, recipient: &str, passphrase: bool) -> Error {
    let message = match e {
        DecryptError::Io(io) => return header_error(&io),
        DecryptError::NoMatchingKeys if passphrase => format!(
            "the file is encrypted with an age passphrase, not to plico's import recipient \
             {recipient}"
        ),
        DecryptError::NoMatchingKeys => format!(
            "the file is encrypted with age but not to plico's import recipient {recipient}"
        ),
        DecryptError::InvalidHeader => "the age header is damaged".to_string(),
        DecryptError::InvalidMac => {
            "the age header is damaged or was altered: its MAC does not verify".to_string()
        }
        DecryptError::UnknownFormat => {
            "the file uses an age format version plico does not know".to_string()
        }
        DecryptError::DecryptionFailed | DecryptError::KeyDecryptionFailed => {
            "the age header is damaged: the file key does not decrypt".to_string()
        }
        _ => "the age header cannot be opened".to_string(),
    };
    Error::Invalid(message)
}

/// Maps an error met while reading the payload to the kind and message the reader returns.
fn payload_problem(e: &io::Error) -> (ErrorKind, String) {
    if let Some(message) = format_problem(e) {
        return (ErrorKind::InvalidData, message);
    }
    match e.kind() {
        ErrorKind::UnexpectedEof => (
            ErrorKind::UnexpectedEof,
            "the age file is truncated: it ends before its last chunk".to_string(),
        ),
        ErrorKind::InvalidData => (
            ErrorKind::InvalidData,
            "the age payload does not verify: the file is truncated or was altered".to_string(),
        ),
        kind => (kind, format!("cannot read the age file: {e}")),
    }
}

/// The bech32 alphabet (BIP 173).
const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// 32 bytes as 5-bit groups: 256 bits, the last group padded with zeros.
const KEY_GROUPS: usize = (KEY_LEN * 8).div_ceil(5);

/// The age text form of an X25519 secret, `AGE-SECRET-KEY-1…`, in a buffer allocated once at
/// its final size and zeroized on drop.
fn secret_key_text(key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let mut groups = Zeroizing::new([0u8; KEY_GROUPS]);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut n = 0;
    for &byte in key {
        // Only the low `bits + 8` (at most 12) bits are still needed.
        acc = ((acc << 8) | u32::from(byte)) & 0xfff;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            groups[n] = ((acc >> bits) & 31) as u8;
            n += 1;
        }
    }
    if bits > 0 {
        groups[n] = ((acc << (5 - bits)) & 31) as u8;
    }
    acc.zeroize();
    let mut text = Zeroizing::new(String::with_capacity(
        SECRET_KEY_HRP.len() + 1 + KEY_GROUPS + 6,
    ));
    bech32_into(SECRET_KEY_HRP, &groups[..], &mut text);
    // Upper case is age's canonical form for secret keys; bech32 checksums the lower case.
    text.make_ascii_uppercase();
    text
}

/// Appends the bech32 (BIP 173) encoding of the 5-bit `groups` under the lower-case `hrp`.
/// Writes into `out` without growing it when it has the room.
fn bech32_into(hrp: &str, groups: &[u8], out: &mut String) {
    fn polymod_step(chk: u32, value: u8) -> u32 {
        const GEN: [u32; 5] = [
            0x3b6a_57b2,
            0x2650_8e6d,
            0x1ea1_19fa,
            0x3d42_33dd,
            0x2a14_62b3,
        ];
        let top = chk >> 25;
        let mut chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(value);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
        chk
    }
    let mut chk: u32 = 1;
    for b in hrp.bytes() {
        chk = polymod_step(chk, b >> 5);
    }
    chk = polymod_step(chk, 0);
    for b in hrp.bytes() {
        chk = polymod_step(chk, b & 31);
    }
    out.push_str(hrp);
    out.push('1');
    for &g in groups {
        chk = polymod_step(chk, g);
        out.push(char::from(BECH32_CHARSET[usize::from(g & 31)]));
    }
    for _ in 0..6 {
        chk = polymod_step(chk, 0);
    }
    chk ^= 1;
    for i in 0..6 {
        let g = (chk >> (5 * (5 - i))) & 31;
        out.push(char::from(BECH32_CHARSET[g as usize]));
    }
    chk.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::age::armor::{ArmoredWriter, Format};
    use ::age::secrecy::SecretString;
    use ::age::Encryptor;
    use std::io::Write;
    use std::process::Command;

    fn identity(byte: u8) -> ImportIdentity {
        ImportIdentity::from_data_key(&DataKey::from_bytes([byte; KEY_LEN])).unwrap()
    }

    fn encrypt_to(recipient: &str, plaintext: &[u8], armor: bool) -> Vec<u8> {
        let recipient: x25519::Recipient = recipient.parse().unwrap();
        let encryptor =
            Encryptor::with_recipients(std::iter::once(&recipient as &dyn ::age::Recipient))
                .unwrap();
        let mut out = vec![];
        if armor {
            let armored = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).unwrap();
            let mut w = encryptor.wrap_output(armored).unwrap();
            w.write_all(plaintext).unwrap();
            w.finish().and_then(|a| a.finish()).unwrap();
        } else {
            let mut w = encryptor.wrap_output(&mut out).unwrap();
            w.write_all(plaintext).unwrap();
            w.finish().unwrap();
        }
        out
    }

    /// A plaintext that spans several STREAM chunks and ends mid-chunk.
    fn batch(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!(
                    "8038{:016};{:05};{:08}\n",
                    i,
                    i % 100_000,
                    i * 7 % 100_000_000
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn decrypt_all(id: &ImportIdentity, file: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = id
            .decrypt(file)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut out = vec![];
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    fn invalid_message(result: Result<Decrypted<&[u8]>>) -> String {
        match result {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn age_round_trip_through_the_crates_encryptor() {
        let id = identity(7);
        for len in [0, 1, 100, CHUNK_LEN, 2 * CHUNK_LEN, 3 * CHUNK_LEN + 12_345] {
            let plain = batch(len);
            let file = encrypt_to(&id.recipient(), &plain, false);
            assert!(is_age(&file));
            assert_eq!(decrypt_all(&id, &file).unwrap(), plain, "length {len}");
        }
    }

    #[test]
    fn age_reader_reads_line_by_line_from_a_slow_source() {
        // A source that hands out a few bytes at a time, as a socket might.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let id = identity(7);
        let plain = batch(CHUNK_LEN + 999);
        for armor in [false, true] {
            let file = encrypt_to(&id.recipient(), &plain, armor);
            let mut reader = id.decrypt(Trickle(&file)).unwrap();
            let mut back = vec![];
            while reader.read_until(b'\n', &mut back).unwrap() > 0 {}
            assert!(back == plain, "armor {armor}: the plaintext differs");
        }
    }

    #[test]
    fn armoured_age_input_decrypts() {
        let id = identity(7);
        for len in [0, 10, 2 * CHUNK_LEN + 5] {
            let plain = batch(len);
            let file = encrypt_to(&id.recipient(), &plain, true);
            assert!(file.starts_with(ARMOR_MARKER));
            assert!(is_age(&file));
            assert_eq!(decrypt_all(&id, &file).unwrap(), plain);
            // CRLF line endings, as a Windows tool may leave them.
            let crlf = String::from_utf8(file.clone())
                .unwrap()
                .replace('\n', "\r\n")
                .into_bytes();
            assert_eq!(decrypt_all(&id, &crlf).unwrap(), plain);
        }
    }

    #[test]
    fn age_file_to_another_recipient_is_refused_with_a_clear_error() {
        let ours = identity(7);
        let theirs = identity(8);
        let file = encrypt_to(
            &theirs.recipient(),
            b"80380000000000000001;48213;90517326\n",
            false,
        );
        let message = invalid_message(ours.decrypt(&file[..]));
        assert_eq!(
            message,
            format!(
                "the file is encrypted with age but not to plico's import recipient {}",
                ours.recipient()
            )
        );

        // A passphrase-encrypted file is named as such.
        let mut passphrase = ::age::scrypt::Recipient::new(SecretString::from("correct horse"));
        passphrase.set_work_factor(2);
        let encryptor =
            Encryptor::with_recipients(std::iter::once(&passphrase as &dyn ::age::Recipient))
                .unwrap();
        let mut file = vec![];
        let mut w = encryptor.wrap_output(&mut file).unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let message = invalid_message(ours.decrypt(&file[..]));
        assert!(message.contains("with an age passphrase"), "{message}");
    }

    #[test]
    fn truncated_age_file_is_an_error_never_a_short_plaintext() {
        let id = identity(7);
        let plain = batch(2 * CHUNK_LEN + 777);
        for armor in [false, true] {
            let file = encrypt_to(&id.recipient(), &plain, armor);
            let mut cuts: Vec<usize> = vec![0, 5, 30, 60, 100, file.len() - 17];
            if !armor {
                cuts.push(file.len() - 1);
                // Exactly at chunk boundaries: every whole chunk before the cut verifies.
                let header = file.len() - (plain.len() + 3 * 16);
                cuts.push(header);
                cuts.push(header + CHUNK_LEN + 16);
                cuts.push(header + 2 * (CHUNK_LEN + 16));
                cuts.push(header + CHUNK_LEN + 16 + 1);
            } else {
                // (Dropping only the final newline leaves a complete armoured file.)
                cuts.push(file.len() - 2);
                cuts.push(file.len() - 40);
                cuts.push(file.len() / 2);
                // Every armour line present, the end marker missing.
                cuts.push(file.len() - b"-----END AGE ENCRYPTED FILE-----\n".len());
            }
            for cut in cuts {
                let short = &file[..cut];
                match id.decrypt(short) {
                    Err(Error::Invalid(m)) => {
                        assert!(m.contains("age"), "cut {cut}: {m}");
                    }
                    Err(e) => panic!("cut {cut}: unexpected error {e:?}"),
                    Ok(mut reader) => {
                        let mut out = vec![];
                        let e = match reader.read_to_end(&mut out) {
                            Ok(n) => {
                                panic!("armor {armor}, cut {cut}: read {n} bytes and no error")
                            }
                            Err(e) => e,
                        };
                        let m = e.to_string();
                        assert!(
                            m.contains("truncated") || m.contains("armour"),
                            "cut {cut}: {m}"
                        );
                        // The error is sticky: no later read reports a clean end of file.
                        let mut more = [0u8; 16];
                        assert!(reader.read(&mut more).is_err());
                    }
                }
            }
        }
        // The exact boundary case gives UnexpectedEof with its own message.
        let file = encrypt_to(&id.recipient(), &plain, false);
        let header = file.len() - (plain.len() + 3 * 16);
        let mut reader = id.decrypt(&file[..header + CHUNK_LEN + 16]).unwrap();
        let e = reader.read_to_end(&mut vec![]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(
            e.to_string(),
            "the age file is truncated: it ends before its last chunk"
        );
    }

    #[test]
    fn tampered_age_payload_or_header_is_refused() {
        let id = identity(7);
        let plain = batch(CHUNK_LEN + 100);
        let file = encrypt_to(&id.recipient(), &plain, false);
        let payload_start = file.len() - (plain.len() + 2 * 16);

        // A flipped payload byte: the reader fails at that chunk.
        for at in [
            payload_start,
            payload_start + CHUNK_LEN + 20,
            file.len() - 1,
        ] {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            let mut reader = id.decrypt(&bad[..]).unwrap();
            let e = reader.read_to_end(&mut vec![]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData);
            assert_eq!(
                e.to_string(),
                "the age payload does not verify: the file is truncated or was altered"
            );
        }

        // Bytes appended after the final chunk.
        let mut long = file.clone();
        long.extend_from_slice(b"trailing");
        assert!(decrypt_all(&id, &long).is_err());

        // The header's MAC line altered.
        let mac_at = file.windows(4).position(|w| w == b"\n---").unwrap() + 5;
        let mut bad = file.clone();
        bad[mac_at] = if bad[mac_at] == b'A' { b'B' } else { b'A' };
        let message = invalid_message(id.decrypt(&bad[..]));
        assert!(
            message.starts_with("the age header is damaged"),
            "{message}"
        );

        // A damaged stanza: its ephemeral share is not base64.
        assert_eq!(&file[22..32], b"-> X25519 ");
        let mut bad = file.clone();
        bad[32] = b'*';
        let message = invalid_message(id.decrypt(&bad[..]));
        assert!(
            message.starts_with("the age header is damaged"),
            "{message}"
        );
    }

    #[test]
    fn non_age_input_is_refused_without_echoing_it() {
        let id = identity(7);
        let clear = b"80380000000000000001;48213;90517326\n";
        assert!(!is_age(clear));
        let message = invalid_message(id.decrypt(&clear[..]));
        assert!(message.contains("not encrypted with age"), "{message}");
        assert!(
            !message.contains("48213") && !message.contains("8038"),
            "{message}"
        );

        assert_eq!(
            invalid_message(id.decrypt(&b"age-encr"[..])),
            "the file ends inside the age header"
        );
        assert_eq!(
            invalid_message(id.decrypt(&b""[..])),
            "the file is empty, not an age file"
        );
        assert_eq!(
            invalid_message(id.decrypt(&b"age-encryption.org/v2\nwhatever\n"[..])),
            "the file uses an age format version plico does not know"
        );
    }

    #[test]
    fn is_age_recognises_binary_and_armoured_headers() {
        assert!(is_age(b"age-encryption.org/v1\n-> X25519 abc"));
        assert!(is_age(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl"));
        assert!(is_age(
            &b"-----BEGIN AGE ENCRYPTED FILE-----\r\n"[..SNIFF_LEN]
        ));
        assert!(!is_age(b"age-encryption.org"));
        assert!(!is_age(b"-----BEGIN AGE ENCRYPTED"));
        assert!(!is_age(b" -----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!is_age(b"-----BEGIN PGP MESSAGE-----"));
        assert!(!is_age(b"serial;pin;puk\n"));
        assert!(!is_age(b""));
    }

    #[test]
    fn age_memory_stays_bounded_on_hostile_input() {
        let id = identity(7);
        // A header line that never ends.
        let mut endless = b"age-encryption.org/v1\n-> X25519 ".to_vec();
        endless.resize(16 * 1024 * 1024, b'A');
        let message = invalid_message(id.decrypt(&endless[..]));
        assert_eq!(message, "the age header is longer than 64 KiB");

        // An armoured file whose payload turns into one endless line.
        let file = encrypt_to(&id.recipient(), &batch(10 * CHUNK_LEN), true);
        let mut bad = file[..file.len() / 2].to_vec();
        bad.resize(16 * 1024 * 1024, b'A');
        let mut reader = id.decrypt(&bad[..]).unwrap();
        let e = reader.read_to_end(&mut vec![]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the age armour has a line longer than {MAX_ARMOR_LINE} bytes")
        );
    }

    #[test]
    fn age_identity_is_redacted_and_matches_a_known_answer() {
        // RFC 7748 section 6.1, Alice's key pair; the recipient was computed by `age-keygen -y`.
        let mut secret = [0u8; KEY_LEN];
        hex::decode_to_slice(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
            &mut secret,
        )
        .unwrap();
        let key = DataKey::from_bytes(secret);
        let id = ImportIdentity::from_data_key(&key).unwrap();
        assert_eq!(
            id.recipient(),
            "age1s5s0qzvfxzn4gayt0hwtg0hhtgxm7wsdycup4a8t5j5ca25mfe4qt4hs7q"
        );
        assert_eq!(
            &*secret_key_text(key.expose_secret()),
            "AGE-SECRET-KEY-1WURK6ZNNRZJH60QKC9E9RVNXGH05CTU8A0QFJ243WLA628DE9S4QRFH26J"
        );
        let shown = format!("{id:?} {id:#?}");
        assert!(shown.contains("<redacted>") && shown.contains(&id.recipient()));
        for needle in [
            "77076d0a",
            "77076D0A",
            "WURK6ZNN",
            "wurk6znn",
            "119, 7, 109",
        ] {
            assert!(
                !shown.contains(needle),
                "debug output leaked {needle}: {shown}"
            );
        }
        let file = encrypt_to(&id.recipient(), b"x", false);
        let reader = id.decrypt(&file[..]).unwrap();
        assert_eq!(format!("{reader:?}"), "Decrypted(<redacted>, open)");
    }

    #[test]
    fn age_bech32_matches_the_bip173_vector() {
        // BIP 173: "abcdef" over the 32 values 0..=31.
        let groups: Vec<u8> = (0..32).collect();
        let mut out = String::new();
        bech32_into("abcdef", &groups, &mut out);
        assert_eq!(out, "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw");
        let mut out = String::new();
        bech32_into("a", &[], &mut out);
        assert_eq!(out, "a12uel5l");
        // The secret key text is built without reallocating.
        let text = secret_key_text(&[9; KEY_LEN]);
        assert_eq!(text.len(), text.capacity());
    }

    /// Runs the real `age` tool. Missing tools fail the test: CI must run it.
    fn run(tool: &str, args: &[&str]) -> Vec<u8> {
        let output = match Command::new(tool).args(args).output() {
            Ok(output) => output,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "the `{tool}` command-line tool is not installed: run `bash scripts/test.sh`, \
                 which installs it (Debian package `age`)"
            ),
            Err(e) => panic!("cannot run `{tool}`: {e}"),
        };
        assert!(
            output.status.success(),
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn age_cli_interop_binary_and_armoured() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(0x42);
        let recipient = id.recipient();
        let plain = batch(2 * CHUNK_LEN + 4321);
        let input = dir.path().join("in.txt");
        std::fs::write(&input, &plain).unwrap();
        let input = input.to_str().unwrap();

        // The public key age's own tool derives from the same secret is ours.
        let key_file = dir.path().join("key.txt");
        std::fs::write(&key_file, secret_key_text(&[0x42; KEY_LEN]).as_bytes()).unwrap();
        let derived = run("age-keygen", &["-y", key_file.to_str().unwrap()]);
        assert_eq!(String::from_utf8(derived).unwrap().trim(), recipient);

        for (name, armor) in [("out.age", false), ("out.asc", true)] {
            let out = dir.path().join(name);
            let out = out.to_str().unwrap();
            let mut args = vec!["-r", recipient.as_str(), "-o", out];
            if armor {
                args.insert(0, "-a");
            }
            args.push(input);
            run("age", &args);
            let file = std::fs::read(out).unwrap();
            assert_eq!(file.starts_with(ARMOR_MARKER), armor);
            assert!(is_age(&file[..SNIFF_LEN]));
            let reader = id.decrypt(std::fs::File::open(out).unwrap()).unwrap();
            let mut back = vec![];
            BufReader::new(reader).read_to_end(&mut back).unwrap();
            assert!(back == plain, "{name}: the plaintext differs");
        }
    }
}
