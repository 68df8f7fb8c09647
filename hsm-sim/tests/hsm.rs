//! SimulatedHsm against its contract: shares, data keys, tampering, rotation, persistence,
//! rekey, and crashes at every step of a state write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hsm_contract::Provider;
use hsm_sim::{FaultHook, FaultPoint, InitOptions, SimulatedHsm};
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vault::{
    Error, Hsm, KeyPurpose, Keyring, Missing, Refusal, ShareRefusal, TermId, TermState, WrappedKey,
};

fn init(dir: &Path, n: u8, m: u8) -> (SimulatedHsm, Vec<SecretString>) {
    let mut shares = Vec::new();
    let (hsm, _) = SimulatedHsm::init(
        dir,
        InitOptions {
            shares: n,
            threshold: m,
            dev: m < 2,
        },
        &mut |s: &[SecretString]| {
            shares = s.to_vec();
            Ok(())
        },
    )
    .unwrap();
    (hsm, shares)
}

fn unseal(hsm: &SimulatedHsm, shares: &[&SecretString]) {
    for s in shares {
        hsm.unseal(s).unwrap();
    }
    assert!(!hsm.status().sealed);
}

fn flip(text: &SecretString, at: usize) -> SecretString {
    let mut b = text.expose_secret().as_bytes().to_vec();
    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
    SecretString::from(String::from_utf8(b).unwrap())
}

#[test]
fn every_quorum_unseals_and_fewer_shares_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 4, 3);
    assert!(hsm.status().sealed);
    for a in 0..4 {
        for b in a + 1..4 {
            for c in b + 1..4 {
                let p1 = hsm.unseal(&shares[a]).unwrap();
                assert!(p1.sealed && p1.progress == 1 && p1.threshold == 3);
                let p2 = hsm.unseal(&shares[b]).unwrap();
                assert!(
                    p2.sealed && p2.progress == 2,
                    "two of three must stay sealed"
                );
                assert!(matches!(
                    hsm.generate_data_key(KeyPurpose::Code),
                    Err(Error::Sealed)
                ));
                let p3 = hsm.unseal(&shares[c]).unwrap();
                assert!(!p3.sealed, "shares {a},{b},{c} should unseal");
                assert!(hsm.generate_data_key(KeyPurpose::Code).is_ok());
                hsm.seal();
                assert!(hsm.status().sealed);
            }
        }
    }
}

#[test]
fn duplicate_corrupted_and_foreign_shares_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 3, 2);
    let other_dir = tempfile::tempdir().unwrap();
    let (_, foreign) = init(other_dir.path(), 3, 2);

    hsm.unseal(&shares[0]).unwrap();
    let dup = hsm.unseal(&shares[0]).unwrap_err();
    assert!(
        matches!(
            dup,
            Error::Share(ShareRefusal::AlreadySubmitted { more: 1, .. })
        ),
        "{dup}"
    );

    // A flipped character anywhere in a share is refused and names no share content.
    let text = shares[1].expose_secret().to_string();
    for at in "plico-share:v1:".len()..text.len() {
        if text.as_bytes()[at] == b':' {
            continue;
        }
        let err = hsm.unseal(&flip(&shares[1], at)).unwrap_err();
        assert!(matches!(err, Error::Share(_)), "at {at}: {err:?}");
        let msg = err.to_string();
        let payload = text.split(':').nth(6).unwrap();
        assert!(!msg.contains(payload), "error echoes the share: {msg}");
    }
    let foreign_err = hsm.unseal(&foreign[1]).unwrap_err();
    assert!(
        matches!(&foreign_err, Error::Share(ShareRefusal::ForeignSet { got, held }) if got != held),
        "{foreign_err}"
    );
    assert!(matches!(
        hsm.unseal(&SecretString::from("hello".to_string())),
        Err(Error::Share(ShareRefusal::Malformed(_)))
    ));

    // None of the refused shares counted: still sealed at 1 of 2, and the right share unseals.
    let st = hsm.status();
    assert!(st.sealed && st.progress == 1);
    assert!(!hsm.unseal(&shares[2]).unwrap().sealed);
}

#[test]
fn threshold_one_needs_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let r = SimulatedHsm::init(
        dir.path(),
        InitOptions {
            shares: 1,
            threshold: 1,
            dev: false,
        },
        &mut |_: &[SecretString]| Ok(()),
    );
    assert!(matches!(
        r,
        Err(Error::Refusal(Refusal::Threshold {
            threshold: 1,
            shares: 1
        }))
    ));
    assert!(!SimulatedHsm::exists(dir.path()));
    let (hsm, shares) = init(dir.path(), 1, 1);
    assert!(hsm.status().dev);
    unseal(&hsm, &[&shares[0]]);
}

#[test]
fn a_failed_share_delivery_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = SimulatedHsm::init(
        dir.path(),
        InitOptions {
            shares: 3,
            threshold: 2,
            dev: false,
        },
        &mut |_: &[SecretString]| Err(Error::Storage("share directory is full".into())),
    );
    assert!(r.is_err());
    assert!(!SimulatedHsm::exists(dir.path()));
}

#[test]
fn any_flipped_byte_of_a_wrapped_key_is_an_integrity_error() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let (key, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    assert_eq!(
        hsm.unwrap_data_key(&wrapped).unwrap().kcv(),
        key.key().kcv()
    );
    for i in 0..wrapped.bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = wrapped.clone();
            t.bytes[i] ^= bit;
            assert!(
                matches!(hsm.unwrap_data_key(&t), Err(Error::Integrity)),
                "byte {i}"
            );
        }
    }
    // The stored layout too: any flipped byte is refused at parse or at unwrap.
    let stored = wrapped.to_bytes();
    for i in 0..stored.len() {
        let mut t = stored.clone();
        t[i] ^= 0x01;
        let r = WrappedKey::from_bytes(&t).and_then(|w| hsm.unwrap_data_key(&w).map(|_| ()));
        assert!(
            matches!(
                r,
                Err(Error::Integrity) | Err(Error::Missing(Missing::Term(_)))
            ),
            "stored byte {i}: {r:?}"
        );
    }
    // Purpose is bound: a code key presented as an audit key does not unwrap.
    let mut as_audit = wrapped.clone();
    as_audit.purpose = KeyPurpose::Audit;
    assert!(matches!(
        hsm.unwrap_data_key(&as_audit),
        Err(Error::Integrity)
    ));
    // Another term: does not unwrap either.
    hsm.rotate().unwrap();
    let mut as_term2 = wrapped.clone();
    as_term2.term = TermId(2);
    assert!(matches!(
        hsm.unwrap_data_key(&as_term2),
        Err(Error::Integrity)
    ));
}

#[test]
fn rotation_rewrap_and_retire() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 3, 2);
    unseal(&hsm, &[&shares[0], &shares[2]]);
    let mut ring = Keyring::new();
    let code = ring
        .create(&hsm, KeyPurpose::Code, &vault::SystemClock)
        .unwrap()
        .key_id();
    let index = ring
        .create(&hsm, KeyPurpose::Index, &vault::SystemClock)
        .unwrap()
        .key_id();
    let kcv = ring.unwrap(&hsm, code).unwrap().kcv();

    let t2 = hsm.rotate().unwrap();
    assert_eq!((t2.id, t2.state), (TermId(2), TermState::Active));
    let st = hsm.status();
    assert_eq!(st.terms[0].state, TermState::DecryptOnly);
    // Under the old term, still unwrappable until rewrapped; new keys go under term 2.
    assert_eq!(ring.unwrap(&hsm, code).unwrap().kcv(), kcv);
    assert_eq!(
        hsm.generate_data_key(KeyPurpose::Code).unwrap().1.term,
        TermId(2)
    );
    assert!(ring.retire_term(&hsm, TermId(1)).is_err());
    assert!(
        hsm.retire_term(TermId(2)).is_err(),
        "the active term cannot be retired"
    );

    let old_wrapped = ring.get(code).unwrap().wrapped.clone();
    let before = std::fs::read_to_string(dir.path().join(SimulatedHsm::STATE_FILE)).unwrap();
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    let sealed_kek_1 = state["body"]["terms"][0]["sealed_kek"]
        .as_str()
        .unwrap()
        .to_string();

    let report = ring.rewrap_to_active(&hsm).unwrap();
    assert_eq!(report.rewrapped, 2);
    ring.retire_term(&hsm, TermId(1)).unwrap();
    assert_eq!(ring.unwrap(&hsm, code).unwrap().kcv(), kcv);
    assert!(ring.unwrap(&hsm, index).is_ok());
    assert!(matches!(
        hsm.unwrap_data_key(&old_wrapped),
        Err(Error::Missing(Missing::Term(TermId(1))))
    ));

    let after = std::fs::read_to_string(dir.path().join(SimulatedHsm::STATE_FILE)).unwrap();
    assert!(
        !after.contains(&sealed_kek_1),
        "retired term's key is still in the state file"
    );
    let state: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(state["body"]["terms"][0]["state"], "retired");
    assert!(state["body"]["terms"][0].get("sealed_kek").is_none());

    // And after a restart the retired term stays gone, the rest still works.
    drop(hsm);
    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    unseal(&hsm, &[&shares[1], &shares[2]]);
    assert_eq!(ring.unwrap(&hsm, code).unwrap().kcv(), kcv);
    assert!(matches!(
        hsm.unwrap_data_key(&old_wrapped),
        Err(Error::Missing(Missing::Term(TermId(1))))
    ));
}

#[test]
fn state_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 3, 2);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let (key, wrapped) = hsm.generate_data_key(KeyPurpose::Holder).unwrap();
    hsm.rotate().unwrap();
    let status = hsm.status();
    drop(hsm);

    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    let reopened = hsm.status();
    assert!(reopened.sealed);
    assert_eq!(reopened.terms, status.terms);
    assert_eq!(reopened.root_kcv, status.root_kcv);
    assert!(matches!(hsm.unwrap_data_key(&wrapped), Err(Error::Sealed)));
    unseal(&hsm, &[&shares[2], &shares[0]]);
    assert_eq!(
        hsm.unwrap_data_key(&wrapped).unwrap().kcv(),
        key.key().kcv()
    );
}

#[test]
fn an_edited_state_file_is_refused_at_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    hsm.rotate().unwrap();
    drop(hsm);
    let path = dir.path().join(SimulatedHsm::STATE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    // Make term 1 active again by hand.
    let edited = text.replacen("\"decrypt_only\"", "\"active\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    hsm.unseal(&shares[0]).unwrap();
    // The shares are right (they open the root key): the refusal names the damaged file.
    match hsm.unseal(&shares[1]) {
        Err(Error::Storage(why)) => {
            assert!(why.contains(&path.display().to_string()), "{why}");
            assert!(why.contains("damaged or was edited"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(hsm.status().sealed);
}

#[test]
fn a_share_refused_for_a_damaged_state_file_says_the_file_may_be_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    drop(hsm);
    let path = dir.path().join(SimulatedHsm::STATE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    // One hex digit of share 1's digest changed, as a flipped byte on disk would.
    let digest = state["body"]["share_set"]["digests"]["1"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = if digest.starts_with('0') { "1" } else { "0" };
    state["body"]["share_set"]["digests"]["1"] = format!("{first}{}", &digest[1..]).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    let share_one = shares
        .iter()
        .find(|s| hsm.unseal(s).is_err())
        .expect("the share whose digest changed is refused");
    match hsm.unseal(share_one) {
        Err(Error::Share(refusal @ vault::ShareRefusal::NotIssued { .. })) => {
            let why = refusal.to_string();
            assert!(why.contains("state file is damaged"), "{why}");
            assert!(!why.contains(share_one.expose_secret()), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(hsm.status().sealed);
}

#[test]
fn a_damaged_state_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), 2, 2);
    let path = dir.path().join(SimulatedHsm::STATE_FILE);
    std::fs::write(&path, b"{ not json").unwrap();
    let err = SimulatedHsm::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("hsm-state.json") && err.contains("not a valid hsm state file"),
        "{err}"
    );
    let missing = tempfile::tempdir().unwrap();
    let err = SimulatedHsm::open(missing.path()).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn rekey_replaces_shares_and_root_and_keeps_data_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, old) = init(dir.path(), 3, 2);
    unseal(&hsm, &[&old[0], &old[1]]);
    let (key, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    let old_root = hsm.status().root_kcv;

    // Too few or wrong shares: refused, nothing changes.
    let mut never = |_: &[SecretString]| -> vault::Result<()> { panic!("must not deliver") };
    assert!(hsm.rekey(&[old[0].clone()], 5, 3, &mut never).is_err());
    let other_dir = tempfile::tempdir().unwrap();
    let (_, foreign) = init(other_dir.path(), 3, 2);
    assert!(hsm
        .rekey(&[old[0].clone(), foreign[1].clone()], 5, 3, &mut never)
        .is_err());
    assert!(hsm
        .rekey(&[old[0].clone(), old[1].clone()], 5, 1, &mut never)
        .is_err());
    assert_eq!(hsm.status().root_kcv, old_root);

    let mut new = Vec::new();
    let outcome = hsm
        .rekey(
            &[old[2].clone(), old[0].clone()],
            5,
            3,
            &mut |s: &[SecretString]| {
                new = s.to_vec();
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(new.len(), 5);
    assert_ne!(outcome.root_kcv, old_root);
    assert_eq!(
        hsm.unwrap_data_key(&wrapped).unwrap().kcv(),
        key.key().kcv()
    );
    drop(hsm);

    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    for s in &old {
        let err = hsm.unseal(s).unwrap_err();
        assert!(
            matches!(err, Error::Share(ShareRefusal::ForeignSet { .. })),
            "{err}"
        );
    }
    unseal(&hsm, &[&new[4], &new[1], &new[3]]);
    assert_eq!(hsm.status().threshold, 3);
    assert_eq!(
        hsm.unwrap_data_key(&wrapped).unwrap().kcv(),
        key.key().kcv()
    );
}

#[test]
fn sealed_hsm_refuses_key_operations() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, _) = init(dir.path(), 2, 2);
    assert!(matches!(
        hsm.generate_data_key(KeyPurpose::Code),
        Err(Error::Sealed)
    ));
    assert!(matches!(hsm.rotate(), Err(Error::Sealed)));
    assert!(matches!(hsm.retire_term(TermId(1)), Err(Error::Sealed)));
    let mut buf = [0u8; 32];
    hsm.fill_random(&mut buf).unwrap();
    assert_ne!(buf, [0u8; 32]);
}

// ---------------------------------------------------------------------------------------------
// Crash test: a child process (this test binary, re-run on the ignored `crash_child` test)
// performs one key operation with a fault hook that aborts the process at a chosen point of the
// state write. The parent then reopens the directory and checks it holds the old or the new
// state — precisely: the old one for every point before the rename, the new one after — and
// that both are usable.

const CHILD_ENV: &str = "PLICO_HSM_CRASH_CHILD";

fn write_shares(dir: &Path, shares: &[SecretString]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, s) in shares.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}")), s.expose_secret()).unwrap();
    }
}

fn read_shares(dir: &Path) -> Vec<SecretString> {
    let mut out = Vec::new();
    for i in 0.. {
        match std::fs::read_to_string(dir.join(format!("{i}"))) {
            Ok(s) => out.push(SecretString::from(s)),
            Err(_) => break,
        }
    }
    out
}

fn point_name(p: FaultPoint) -> String {
    format!("{p:?}")
}

/// The child's side. Ignored in normal runs; the parent runs it by name.
#[test]
#[ignore = "run by crash_at_every_fault_point_leaves_old_or_new_state"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (op, point, dir) = {
        let mut it = spec.splitn(3, ':');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let dir = Path::new(&dir);
    let hook: FaultHook = Arc::new(move |p: FaultPoint| {
        if point_name(p) == point {
            std::process::abort();
        }
    });
    let hsm_dir = dir.join("hsm");
    if op == "init" {
        let _ = SimulatedHsm::init_with_fault_hook(
            &hsm_dir,
            InitOptions {
                shares: 3,
                threshold: 2,
                dev: false,
            },
            &mut |s: &[SecretString]| {
                write_shares(&dir.join("new-shares"), s);
                Ok(())
            },
            Some(hook),
        );
        return;
    }
    let hsm = SimulatedHsm::open_with_fault_hook(&hsm_dir, Some(hook)).unwrap();
    let shares = read_shares(&dir.join("shares"));
    hsm.unseal(&shares[0]).unwrap();
    hsm.unseal(&shares[1]).unwrap();
    match op.as_str() {
        "rotate" => {
            hsm.rotate().unwrap();
        }
        "retire" => hsm.retire_term(TermId(1)).unwrap(),
        "rekey" => {
            hsm.rekey(&shares[..2], 4, 3, &mut |s: &[SecretString]| {
                write_shares(&dir.join("new-shares"), s);
                Ok(())
            })
            .unwrap();
        }
        other => panic!("unknown op {other}"),
    }
}

/// Prepares the directory for `op`: an HSM with term 1 (decrypt-only) and term 2 (active), and a
/// data key wrapped under each, so every operation has something to lose.
fn prepare(root: &Path, op: &str) -> Vec<WrappedKey> {
    let hsm_dir = root.join("hsm");
    std::fs::create_dir_all(&hsm_dir).unwrap();
    if op == "init" {
        return Vec::new();
    }
    let (hsm, shares) = init(&hsm_dir, 3, 2);
    write_shares(&root.join("shares"), &shares);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let (_, w1) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    hsm.rotate().unwrap();
    let (_, w2) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    // For "retire", the key under term 1 is rewrapped first, as the keyring would.
    let w1 = if op == "retire" {
        hsm.rewrap_data_key(&w1).unwrap()
    } else {
        w1
    };
    vec![w1, w2]
}

fn check_after_crash(root: &Path, op: &str, point: FaultPoint, keys: &[WrappedKey]) {
    let hsm_dir = root.join("hsm");
    let committed = matches!(point, FaultPoint::Renamed | FaultPoint::Committed);
    let ctx = format!("{op} crashed at {point:?}");
    if op == "init" {
        assert_eq!(SimulatedHsm::exists(&hsm_dir), committed, "{ctx}");
        let (hsm, s) = if committed {
            (
                SimulatedHsm::open(&hsm_dir).unwrap(),
                read_shares(&root.join("new-shares")),
            )
        } else {
            // Nothing was committed: running init again works and clears the leftover.
            init(&hsm_dir, 3, 2)
        };
        assert!(
            !hsm_dir.join("hsm-state.json.tmp").exists(),
            "{ctx}: leftover temp file"
        );
        unseal(&hsm, &[&s[0], &s[2]]);
        assert!(hsm.generate_data_key(KeyPurpose::Code).is_ok(), "{ctx}");
        return;
    }
    let hsm = SimulatedHsm::open(&hsm_dir).unwrap();
    assert!(
        !hsm_dir.join("hsm-state.json.tmp").exists(),
        "{ctx}: leftover temp file"
    );
    let old = read_shares(&root.join("shares"));
    if op == "rekey" && committed {
        assert!(
            hsm.unseal(&old[0]).is_err(),
            "{ctx}: old shares still accepted"
        );
        let new = read_shares(&root.join("new-shares"));
        unseal(&hsm, &[&new[0], &new[1], &new[3]]);
    } else {
        unseal(&hsm, &[&old[1], &old[2]]);
    }
    let terms = hsm.status().terms;
    match op {
        "rotate" => assert_eq!(terms.len(), if committed { 3 } else { 2 }, "{ctx}"),
        "retire" => assert_eq!(
            terms[0].state,
            if committed {
                TermState::Retired
            } else {
                TermState::DecryptOnly
            },
            "{ctx}"
        ),
        _ => assert_eq!(terms.len(), 2, "{ctx}"),
    }
    for w in keys {
        assert!(
            hsm.unwrap_data_key(w).is_ok(),
            "{ctx}: a data key no longer unwraps"
        );
    }
    // The state is usable for the next operation too.
    hsm.rotate().unwrap();
    assert!(hsm.generate_data_key(KeyPurpose::Code).is_ok(), "{ctx}");
}

#[test]
fn crash_at_every_fault_point_leaves_old_or_new_state() {
    let exe = std::env::current_exe().unwrap();
    for op in ["init", "rotate", "retire", "rekey"] {
        for point in FaultPoint::ALL {
            let root = tempfile::tempdir().unwrap();
            let keys = prepare(root.path(), op);
            let spec = format!("{op}:{}:{}", point_name(point), root.path().display());
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &spec)
                .output()
                .unwrap();
            // SIGABRT from the hook, not a panic (exit 101) or a clean exit.
            assert_eq!(
                out.status.signal(),
                Some(6),
                "{op} at {point:?}: the child did not stop at the fault point: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            check_after_crash(root.path(), op, point, &keys);
        }
    }
}

#[test]
fn debug_output_of_an_unsealed_hsm_carries_no_key_or_share() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    hsm.unseal(&shares[0]).unwrap();
    let half = format!("{hsm:?} {:?}", hsm.status());
    hsm.unseal(&shares[1]).unwrap();
    let (fresh, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    let key = hsm.unwrap_data_key(&wrapped).unwrap();
    let all = format!(
        "{half} {hsm:?} {hsm:#?} {fresh:?} {key:?} {wrapped:?} {:?}",
        hsm.status()
    );
    let key_hex = hex::encode(key.expose_secret());
    assert!(!all.contains(&key_hex), "{all}");
    for s in &shares {
        let payload = s.expose_secret().split(':').nth(6).unwrap().to_string();
        assert!(!all.contains(&payload), "{all}");
    }
    // No long hex run (a key or share payload) appears anywhere.
    let longest_hex_run = all
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_hex_run < 32, "{all}");
}

#[test]
fn the_audit_anchor_persists_and_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    assert!(matches!(hsm.audit_anchor(), Err(Error::Sealed)));
    unseal(&hsm, &[&shares[0], &shares[1]]);
    assert_eq!(hsm.audit_anchor().unwrap(), None);
    let g0 = hsm.status().generation;
    let a = vault::AuditAnchor {
        seq: 10,
        hash: "ab".repeat(32),
    };
    hsm.set_audit_anchor(&a).unwrap();
    assert_eq!(hsm.status().generation, g0 + 1, "every state change counts");
    let back = vault::AuditAnchor {
        seq: 9,
        hash: "cd".repeat(32),
    };
    assert!(matches!(
        hsm.set_audit_anchor(&back),
        Err(Error::Refusal(Refusal::AnchorBackwards {
            held: 10,
            given: 9
        }))
    ));
    let forked = vault::AuditAnchor {
        seq: 10,
        hash: "ef".repeat(32),
    };
    assert!(matches!(
        hsm.set_audit_anchor(&forked),
        Err(Error::Refusal(Refusal::AnchorForked { seq: 10 }))
    ));
    drop(hsm);
    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    unseal(&hsm, &[&shares[1], &shares[0]]);
    assert_eq!(hsm.audit_anchor().unwrap(), Some(a));
    assert_eq!(hsm.status().generation, g0 + 1);
}

#[test]
fn an_older_copy_of_the_hsm_state_is_refused_by_the_store_that_saw_a_newer_one() {
    use vault::{AuditLog, NewEvent};
    use vault::{MemoryStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init(dir.path(), 2, 2);
    let state = dir.path().join(SimulatedHsm::STATE_FILE);
    let old = std::fs::read(&state).unwrap();
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let hsm: Arc<dyn Hsm> = Arc::new(hsm);
    let log = AuditLog::open(store.clone(), 1000).unwrap();
    log.unlock(hsm.clone()).unwrap();
    log.append(NewEvent::new("card.activate", "S1")).unwrap();
    log.checkpoint().unwrap(); // moves the anchor: a new hsm state generation, remembered
    drop(log);
    drop(hsm);

    std::fs::write(&state, old).unwrap();
    let hsm = SimulatedHsm::open(dir.path()).unwrap();
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let log = AuditLog::open(store, 1000).unwrap();
    let err = log.unlock(Arc::new(hsm)).unwrap_err().to_string();
    assert!(err.contains("older copy of the hsm state"), "{err}");
    assert!(!log.has_key());
}

// ---------------------------------------------------------------------------------------------
// The shared `vault::Hsm` contract suite (crate `hsm-contract`), the same one Pkcs11Hsm runs.

/// Each HSM in a temporary directory of its own.
struct Sim {
    dirs: Vec<tempfile::TempDir>,
}

impl Provider for Sim {
    fn init(&mut self, shares: u8, threshold: u8) -> (Box<dyn Hsm>, Vec<SecretString>) {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let (hsm, _) = SimulatedHsm::init(
            dir.path(),
            InitOptions {
                shares,
                threshold,
                dev: threshold < 2,
            },
            &mut |s: &[SecretString]| {
                out = s.to_vec();
                Ok(())
            },
        )
        .unwrap();
        self.dirs.push(dir);
        (Box::new(hsm), out)
    }

    fn reopen(&mut self) -> Box<dyn Hsm> {
        Box::new(SimulatedHsm::open(self.dirs.last().unwrap().path()).unwrap())
    }
}

hsm_contract::hsm_contract_tests!(super::Sim { dirs: Vec::new() });
