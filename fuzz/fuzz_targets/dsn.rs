//! The DSN bounce parser (`dispatch::dsn::parse`, what `POST /v1/bounces` reads).
//!
//! First byte even: the rest is the message. Checked: no panic; a DSN that parses has at least
//! one recipient, each with a non-empty recipient, a known action and a status of class 2, 4
//! or 5 with subject and detail up to 999; a plico message digest is 32 lower-case hex
//! digits; a refusal never repeats a digit run of the message.
//!
//! First byte odd: a DSN is written from the bytes (recipients, actions, statuses, envelope
//! id, the returned message's `Message-ID`, LF or CRLF, `RET=FULL` or `RET=HDRS`), and the
//! rest of the bytes is the returned message's body, full of look-alike fields. Checked: it
//! parses to exactly what was written (decode(encode(x)) == x): the body is never read.
#![no_main]

use dispatch::dsn::{parse, plico_message_digest, Action, Dsn, RecipientStatus, Status};
use libfuzzer_sys::fuzz_target;
use plico_fuzz::{assert_no_echo, Bytes};

const BOUNDARY: &str = "plico-fuzz.1796665502/relay.example.it";
const ACTIONS: [Action; 5] = [
    Action::Failed,
    Action::Delayed,
    Action::Delivered,
    Action::Relayed,
    Action::Expanded,
];

fn word(b: &mut Bytes<'_>, max: u8) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._+";
    let n = usize::from(b.byte() % max) + 1;
    (0..n)
        .map(|_| char::from(ALPHABET[usize::from(b.byte()) % ALPHABET.len()]))
        .collect()
}

fn check(dsn: &Dsn) {
    assert!(!dsn.recipients.is_empty());
    for r in &dsn.recipients {
        assert!(!r.final_recipient.is_empty() && r.final_recipient.trim() == r.final_recipient);
        assert!(matches!(r.status.class, 2 | 4 | 5));
        assert!(r.status.subject <= 999 && r.status.detail <= 999);
        assert_eq!(r.status.is_permanent(), r.status.class == 5);
    }
    if let Some(id) = &dsn.message_id {
        if let Some(d) = plico_message_digest(id) {
            assert!(
                d.len() == 32
                    && d.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let mode = bytes.byte();
    if mode & 1 == 0 {
        let message = bytes.rest();
        match parse(message) {
            Ok(dsn) => check(&dsn),
            Err(e) => assert_no_echo(&e.to_string(), message),
        }
        return;
    }

    let crlf = mode & 2 != 0;
    let full = mode & 4 != 0;
    let envelope_id = word(&mut bytes, 24);
    let count = usize::from((mode >> 3) & 3) + 1;
    let mut recipients = Vec::new();
    for _ in 0..count {
        let final_recipient = format!("{}@{}", word(&mut bytes, 20), word(&mut bytes, 12));
        let action = ACTIONS[usize::from(bytes.byte()) % ACTIONS.len()];
        let status = Status {
            class: [2, 4, 5][usize::from(bytes.byte()) % 3],
            subject: bytes.u16() % 1000,
            detail: bytes.u16() % 1000,
        };
        let diagnostic_code = (bytes.byte() & 1 == 1).then(|| {
            format!(
                "smtp; {}{} {}",
                status.class,
                word(&mut bytes, 3),
                word(&mut bytes, 30)
            )
        });
        recipients.push(RecipientStatus {
            final_recipient,
            action,
            status,
            diagnostic_code,
        });
    }
    let digest: String = bytes.take(16).iter().map(|b| format!("{b:02x}")).collect();
    let message_id = format!("<{digest}.plico@example.it>");

    let mut text = format!(
        "Return-Path: <>\n\
         From: MAILER-DAEMON@relay.example.it (Mail Delivery System)\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\
         \tboundary=\"{BOUNDARY}\"\n\
         \n\
         This is a MIME-encapsulated message.\n\
         \n\
         --{BOUNDARY}\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         Status: 2.0.0\n\
         Message-ID: <decoy@example.it>\n\
         \n\
         --{BOUNDARY}\n\
         Content-Type: message/delivery-status\n\
         \n\
         Reporting-MTA: dns; relay.example.it\n\
         Original-Envelope-Id: {envelope_id}\n"
    );
    for r in &recipients {
        text.push_str(&format!(
            "\nFinal-Recipient: rfc822; {}\nAction: {}\nStatus: {}\n",
            r.final_recipient,
            r.action.as_str(),
            r.status
        ));
        if let Some(d) = &r.diagnostic_code {
            text.push_str(&format!("Diagnostic-Code: {d}\n"));
        }
    }
    let kind = if full {
        "message/rfc822"
    } else {
        "text/rfc822-headers"
    };
    text.push_str(&format!(
        "\n--{BOUNDARY}\nContent-Type: {kind}\n\nMessage-ID: {message_id}\nSubject: codes\n"
    ));
    if crlf {
        text = text.replace('\n', "\r\n");
    }
    let mut raw = text.into_bytes();
    if full {
        let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        raw.extend_from_slice(nl);
        // The returned body: any bytes, but never a line that closes the part.
        let body: Vec<u8> = bytes
            .rest()
            .iter()
            .map(|&b| if b == b'-' { b'_' } else { b })
            .collect();
        raw.extend_from_slice(b"Message-ID: <body.decoy@example.it>\nStatus: 2.0.0\n\n");
        raw.extend_from_slice(&body);
        raw.extend_from_slice(nl);
    }
    raw.extend_from_slice(format!("--{BOUNDARY}--\n").as_bytes());

    let want = Dsn {
        envelope_id: Some(envelope_id),
        recipients,
        message_id: Some(message_id.clone()),
    };
    let got = parse(&raw).unwrap_or_else(|e| panic!("a DSN written here does not parse: {e}"));
    assert_eq!(got, want, "the DSN read is not the DSN written");
    assert_eq!(
        plico_message_digest(&message_id).map(|d| d.len()),
        (digest.len() == 32).then_some(32)
    );
    check(&got);
});
