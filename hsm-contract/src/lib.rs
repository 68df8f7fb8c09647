//! # hsm-contract — the `vault::Hsm` contract, one suite for every provider
//!
//! Each behaviour plico relies on from an HSM is one function here, written against the trait
//! only: unseal by quorum, refused shares, data keys per purpose, tampering (one opaque
//! [`Error::Integrity`]), rotate, rewrap, retire, rekey, the audit anchor, sealing, persistence
//! across a restart. A provider's integration tests implement [`Provider`] (how to make a fresh
//! HSM and how to reopen it) and expand [`hsm_contract_tests!`], which makes one `#[test]` per
//! behaviour, so `SimulatedHsm` and `Pkcs11Hsm` pass exactly the same checks.
//!
//! This is test support: a failed check panics with what was expected. It is a dev-dependency
//! only and never part of the service binary. Provider-specific checks (a state file edited by
//! hand, a token object replaced, crash points) stay in the provider's own tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use secrecy::{ExposeSecret, SecretString};
use vault::{
    AuditAnchor, Error, Hsm, KeyPurpose, Keyring, Missing, Refusal, ShareRefusal, TermId, TermState,
};

/// How the suite makes and reopens an HSM of one provider.
pub trait Provider {
    /// A fresh HSM with `shares` custodian shares of which `threshold` unseal, sealed, and its
    /// shares. Each call makes an independent HSM (its shares do not open another one).
    /// A threshold of 1 is a development HSM.
    fn init(&mut self, shares: u8, threshold: u8) -> (Box<dyn Hsm>, Vec<SecretString>);

    /// The HSM last made by [`Provider::init`], opened again from what it persisted, sealed
    /// (the caller has dropped the previous instance: a restart).
    fn reopen(&mut self) -> Box<dyn Hsm>;
}

fn unseal(hsm: &dyn Hsm, shares: &[&SecretString]) {
    for s in shares {
        hsm.unseal(s).unwrap();
    }
    assert!(!hsm.status().sealed, "the quorum did not unseal");
}

fn same_key(hsm: &dyn Hsm, wrapped: &vault::WrappedKey, fresh: &vault::FreshDataKey) {
    let back = hsm.unwrap_data_key(wrapped).unwrap();
    assert_eq!(back.expose_secret(), fresh.key().expose_secret());
}

/// Any `threshold` distinct shares unseal; fewer leave the HSM sealed and refusing key work;
/// `seal` seals again.
pub fn every_quorum_unseals_and_fewer_shares_do_not(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(4, 3);
    assert!(hsm.status().sealed);
    for a in 0..4 {
        for b in a + 1..4 {
            for c in b + 1..4 {
                let p1 = hsm.unseal(&shares[a]).unwrap();
                assert!(p1.sealed && p1.progress == 1 && p1.threshold == 3);
                let p2 = hsm.unseal(&shares[b]).unwrap();
                assert!(p2.sealed && p2.progress == 2, "two of three stay sealed");
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

/// A duplicate, a corrupted, a foreign and a malformed share are refused as share errors that
/// do not echo the share, and none of them counts towards the quorum.
pub fn duplicate_corrupted_and_foreign_shares_are_refused(p: &mut dyn Provider) {
    let (_other, foreign) = p.init(3, 2);
    let (hsm, shares) = p.init(3, 2);
    hsm.unseal(&shares[0]).unwrap();
    assert!(matches!(
        hsm.unseal(&shares[0]),
        Err(Error::Share(ShareRefusal::AlreadySubmitted { more: 1, .. }))
    ));
    let text = shares[1].expose_secret().to_string();
    let payload = text.split(':').nth(6).unwrap().to_string();
    for at in (text.len() - payload.len())..text.len() {
        let mut b = text.as_bytes().to_vec();
        b[at] = if b[at] == b'a' { b'b' } else { b'a' };
        let flipped = SecretString::from(String::from_utf8(b).unwrap());
        let err = hsm.unseal(&flipped).unwrap_err();
        assert!(matches!(err, Error::Share(_)), "at {at}: {err:?}");
        assert!(
            !err.to_string().contains(&payload),
            "error echoes the share"
        );
    }
    assert!(matches!(
        hsm.unseal(&foreign[1]),
        Err(Error::Share(ShareRefusal::ForeignSet { .. }))
    ));
    assert!(matches!(
        hsm.unseal(&SecretString::from("hello".to_string())),
        Err(Error::Share(ShareRefusal::Malformed(_)))
    ));
    let st = hsm.status();
    assert!(st.sealed && st.progress == 1, "a refused share counted");
    assert!(!hsm.unseal(&shares[2]).unwrap().sealed);
}

/// Every purpose's data key unwraps to the key that was generated; a fresh key is random.
pub fn data_keys_unwrap_for_every_purpose(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    let mut seen = Vec::new();
    for purpose in KeyPurpose::ALL {
        let (fresh, wrapped) = hsm.generate_data_key(purpose).unwrap();
        assert_eq!(wrapped.purpose, purpose);
        assert_eq!(wrapped.term, TermId(1));
        assert_eq!(wrapped.kcv, fresh.key().kcv());
        same_key(&*hsm, &wrapped, &fresh);
        let stored = vault::WrappedKey::from_bytes(&wrapped.to_bytes()).unwrap();
        same_key(&*hsm, &stored, &fresh);
        seen.push(*fresh.key().expose_secret());
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), KeyPurpose::ALL.len(), "two data keys are equal");
}

/// Any flipped bit of a wrapped key, of its stored layout, another purpose or another term:
/// one opaque integrity error (or not found for a term that has no key).
pub fn tampered_wrapped_keys_are_one_integrity_error(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    let (_, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    for i in 0..wrapped.bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = wrapped.clone();
            t.bytes[i] ^= bit;
            let r = hsm.unwrap_data_key(&t);
            assert!(matches!(r, Err(Error::Integrity)), "byte {i}: {r:?}");
            let r = hsm.rewrap_data_key(&t);
            assert!(matches!(r, Err(Error::Integrity)), "rewrap byte {i}: {r:?}");
        }
    }
    let mut short = wrapped.clone();
    short.bytes.truncate(24);
    assert!(matches!(hsm.unwrap_data_key(&short), Err(Error::Integrity)));
    let stored = wrapped.to_bytes();
    for i in 0..stored.len() {
        let mut t = stored.clone();
        t[i] ^= 0x01;
        let r = vault::WrappedKey::from_bytes(&t).and_then(|w| hsm.unwrap_data_key(&w).map(|_| ()));
        assert!(
            matches!(
                r,
                Err(Error::Integrity) | Err(Error::Missing(Missing::Term(_)))
            ),
            "stored byte {i}: {r:?}"
        );
    }
    let mut wrong_kcv = wrapped.clone();
    wrong_kcv.kcv = vault::Kcv::from_bytes([0, 0, 0]);
    if wrong_kcv.kcv != wrapped.kcv {
        assert!(matches!(
            hsm.unwrap_data_key(&wrong_kcv),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            hsm.rewrap_data_key(&wrong_kcv),
            Err(Error::Integrity)
        ));
    }
    for purpose in KeyPurpose::ALL
        .into_iter()
        .filter(|p| *p != KeyPurpose::Code)
    {
        let mut other = wrapped.clone();
        other.purpose = purpose;
        let r = hsm.unwrap_data_key(&other);
        assert!(matches!(r, Err(Error::Integrity)), "as {purpose}: {r:?}");
    }
    hsm.rotate().unwrap();
    let mut as_term2 = wrapped.clone();
    as_term2.term = TermId(2);
    assert!(matches!(
        hsm.unwrap_data_key(&as_term2),
        Err(Error::Integrity)
    ));
    let mut unknown = wrapped.clone();
    unknown.term = TermId(99);
    assert!(matches!(
        hsm.unwrap_data_key(&unknown),
        Err(Error::Missing(Missing::Term(TermId(99))))
    ));
}

/// rotate makes a new active term; old keys still unwrap; rewrap moves them to the active
/// term with the same clear key; retire destroys the old term, which then unwraps nothing,
/// also after a restart; the active term cannot be retired.
pub fn rotate_rewrap_and_retire(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(3, 2);
    unseal(&*hsm, &[&shares[0], &shares[2]]);
    let t1_kcv = hsm.status().terms[0].kcv;
    let mut ring = Keyring::new();
    let code = ring
        .create(&*hsm, KeyPurpose::Code, &vault::SystemClock)
        .unwrap()
        .key_id();
    let index = ring
        .create(&*hsm, KeyPurpose::Index, &vault::SystemClock)
        .unwrap()
        .key_id();
    let clear = *ring.unwrap(&*hsm, code).unwrap().expose_secret();
    let old_wrapped = ring.get(code).unwrap().wrapped.clone();
    let g0 = hsm.status().generation;

    let t2 = hsm.rotate().unwrap();
    assert_eq!((t2.id, t2.state), (TermId(2), TermState::Active));
    assert_ne!(t2.kcv, t1_kcv, "a new term has a new key");
    let st = hsm.status();
    assert!(st.generation > g0, "a rotate is a state change");
    assert_eq!(st.terms.len(), 2);
    assert_eq!(st.terms[0].state, TermState::DecryptOnly);
    assert_eq!(ring.unwrap(&*hsm, code).unwrap().expose_secret(), &clear);
    assert_eq!(
        hsm.generate_data_key(KeyPurpose::Code).unwrap().1.term,
        TermId(2)
    );
    assert!(matches!(
        hsm.retire_term(TermId(2)),
        Err(Error::Refusal(Refusal::TermActive { term: TermId(2) }))
    ));
    assert!(matches!(
        hsm.retire_term(TermId(7)),
        Err(Error::Missing(Missing::Term(TermId(7))))
    ));
    assert!(
        ring.retire_term(&*hsm, TermId(1)).is_err(),
        "keys still under term 1"
    );

    let rewrapped = hsm.rewrap_data_key(&old_wrapped).unwrap();
    assert_eq!(rewrapped.term, TermId(2));
    assert_eq!(rewrapped.kcv, old_wrapped.kcv);
    assert_ne!(rewrapped.bytes, old_wrapped.bytes);
    assert_eq!(
        hsm.unwrap_data_key(&rewrapped).unwrap().expose_secret(),
        &clear
    );

    let report = ring.rewrap_to_active(&*hsm).unwrap();
    assert_eq!(report.rewrapped, 2);
    ring.retire_term(&*hsm, TermId(1)).unwrap();
    assert_eq!(hsm.status().terms[0].state, TermState::Retired);
    assert!(matches!(
        hsm.retire_term(TermId(1)),
        Err(Error::Refusal(Refusal::TermRetired { term: TermId(1) }))
    ));
    assert_eq!(ring.unwrap(&*hsm, code).unwrap().expose_secret(), &clear);
    assert!(ring.unwrap(&*hsm, index).is_ok());
    assert!(matches!(
        hsm.unwrap_data_key(&old_wrapped),
        Err(Error::Missing(Missing::Term(TermId(1))))
    ));
    assert!(matches!(
        hsm.rewrap_data_key(&old_wrapped),
        Err(Error::Missing(Missing::Term(TermId(1))))
    ));

    drop(hsm);
    let hsm = p.reopen();
    unseal(&*hsm, &[&shares[1], &shares[2]]);
    let st = hsm.status();
    assert_eq!(st.terms[0].state, TermState::Retired);
    assert_eq!(st.terms[1].state, TermState::Active);
    assert_eq!(ring.unwrap(&*hsm, code).unwrap().expose_secret(), &clear);
    assert!(matches!(
        hsm.unwrap_data_key(&old_wrapped),
        Err(Error::Missing(Missing::Term(TermId(1))))
    ));
}

/// Terms, root KCV and keys survive a restart; the reopened HSM is sealed.
pub fn state_persists_across_restart(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(3, 2);
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    let (fresh, wrapped) = hsm.generate_data_key(KeyPurpose::Holder).unwrap();
    hsm.rotate().unwrap();
    let status = hsm.status();
    drop(hsm);
    let hsm = p.reopen();
    let reopened = hsm.status();
    assert!(reopened.sealed);
    assert_eq!(reopened.terms, status.terms);
    assert_eq!(reopened.root_kcv, status.root_kcv);
    assert_eq!(reopened.generation, status.generation);
    assert!(matches!(hsm.unwrap_data_key(&wrapped), Err(Error::Sealed)));
    unseal(&*hsm, &[&shares[2], &shares[0]]);
    same_key(&*hsm, &wrapped, &fresh);
}

/// A sealed HSM refuses every key operation with `Sealed` but still gives random bytes and
/// its public status; a key unwrapped before the seal is not usable after.
pub fn sealed_hsm_refuses_key_operations(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    let (_, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    hsm.seal();
    assert!(hsm.status().sealed);
    assert!(matches!(
        hsm.generate_data_key(KeyPurpose::Code),
        Err(Error::Sealed)
    ));
    assert!(matches!(hsm.unwrap_data_key(&wrapped), Err(Error::Sealed)));
    assert!(matches!(hsm.rewrap_data_key(&wrapped), Err(Error::Sealed)));
    assert!(matches!(hsm.rotate(), Err(Error::Sealed)));
    assert!(matches!(hsm.retire_term(TermId(1)), Err(Error::Sealed)));
    assert!(matches!(hsm.audit_anchor(), Err(Error::Sealed)));
    let mut buf = [0u8; 32];
    hsm.fill_random(&mut buf).unwrap();
    assert_ne!(buf, [0u8; 32]);
    // Half an unseal, then a reset: the shares submitted are forgotten.
    hsm.unseal(&shares[0]).unwrap();
    hsm.reset_unseal();
    assert_eq!(hsm.status().progress, 0);
    assert!(hsm.unseal(&shares[1]).unwrap().sealed);
    assert!(!hsm.unseal(&shares[0]).unwrap().sealed);
    assert!(hsm.unwrap_data_key(&wrapped).is_ok());
}

/// A rekey needs a quorum of the current shares; refused attempts change nothing and deliver
/// nothing; a failed delivery changes nothing; after it, the new shares (new threshold) open
/// the HSM, the old ones do not, and every data key still unwraps.
pub fn rekey_replaces_shares_and_root_and_keeps_data_keys(p: &mut dyn Provider) {
    let (_other, foreign) = p.init(3, 2);
    let (hsm, old) = p.init(3, 2);
    unseal(&*hsm, &[&old[0], &old[1]]);
    let (fresh, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    let old_root = hsm.status().root_kcv;
    let old_set = hsm.status().share_set;

    let mut never = |_: &[SecretString]| -> vault::Result<()> { panic!("must not deliver") };
    assert!(hsm.rekey(&[old[0].clone()], 5, 3, &mut never).is_err());
    assert!(hsm
        .rekey(&[old[0].clone(), foreign[1].clone()], 5, 3, &mut never)
        .is_err());
    assert!(hsm
        .rekey(&[old[0].clone(), old[1].clone()], 5, 1, &mut never)
        .is_err());
    let failed = hsm.rekey(
        &[old[0].clone(), old[1].clone()],
        3,
        2,
        &mut |_: &[SecretString]| Err(Error::Storage("share directory is full".into())),
    );
    assert!(failed.is_err());
    assert_eq!(hsm.status().root_kcv, old_root);
    assert_eq!(hsm.status().share_set, old_set);

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
    assert_eq!((outcome.shares, outcome.threshold), (5, 3));
    assert_ne!(outcome.root_kcv, old_root);
    assert_ne!(outcome.share_set, old_set);
    same_key(&*hsm, &wrapped, &fresh);
    drop(hsm);

    let hsm = p.reopen();
    for s in &old {
        assert!(matches!(
            hsm.unseal(s),
            Err(Error::Share(ShareRefusal::ForeignSet { .. }))
        ));
    }
    unseal(&*hsm, &[&new[4], &new[1], &new[3]]);
    let st = hsm.status();
    assert_eq!((st.threshold, st.shares), (3, 5));
    assert_eq!(st.share_set, outcome.share_set);
    assert_eq!(st.root_kcv, outcome.root_kcv);
    same_key(&*hsm, &wrapped, &fresh);
}

/// The audit anchor starts empty, moves only forward (an older one and a fork are refused),
/// counts as a state change, and survives a restart.
pub fn the_audit_anchor_persists_and_only_moves_forward(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    assert!(matches!(hsm.audit_anchor(), Err(Error::Sealed)));
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    assert_eq!(hsm.audit_anchor().unwrap(), None);
    let g0 = hsm.status().generation;
    let a = AuditAnchor {
        seq: 10,
        hash: "ab".repeat(32),
    };
    hsm.set_audit_anchor(&a).unwrap();
    assert_eq!(hsm.status().generation, g0 + 1, "every state change counts");
    hsm.set_audit_anchor(&a).unwrap();
    let back = AuditAnchor {
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
    let fork = AuditAnchor {
        seq: 10,
        hash: "ef".repeat(32),
    };
    assert!(matches!(
        hsm.set_audit_anchor(&fork),
        Err(Error::Refusal(Refusal::AnchorForked { seq: 10 }))
    ));
    assert_eq!(hsm.audit_anchor().unwrap(), Some(a.clone()));
    drop(hsm);
    let hsm = p.reopen();
    unseal(&*hsm, &[&shares[1], &shares[0]]);
    assert_eq!(hsm.audit_anchor().unwrap(), Some(a));
    let later = AuditAnchor {
        seq: 11,
        hash: "01".repeat(32),
    };
    hsm.set_audit_anchor(&later).unwrap();
    assert_eq!(hsm.audit_anchor().unwrap(), Some(later));
}

/// The `Debug` of an unsealed HSM, its status, keys and shares carry no key or share bytes.
pub fn debug_output_carries_no_key_or_share(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    hsm.unseal(&shares[0]).unwrap();
    let half = format!("{hsm:?} {:?}", hsm.status());
    hsm.unseal(&shares[1]).unwrap();
    let (fresh, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
    let key = hsm.unwrap_data_key(&wrapped).unwrap();
    let all = format!(
        "{half} {hsm:?} {hsm:#?} {fresh:?} {key:?} {wrapped:?} {:?}",
        hsm.status()
    );
    assert!(!all.contains(&hex::encode(key.expose_secret())), "{all}");
    for s in &shares {
        let payload = s.expose_secret().split(':').nth(6).unwrap().to_string();
        assert!(!all.contains(&payload), "{all}");
    }
    let longest_hex_run = all
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_hex_run < 32, "{all}");
}

/// Threads share one HSM: concurrent generate, unwrap and rewrap all succeed and agree.
pub fn concurrent_use_from_many_threads(p: &mut dyn Provider) {
    let (hsm, shares) = p.init(2, 2);
    unseal(&*hsm, &[&shares[0], &shares[1]]);
    let hsm: &dyn Hsm = &*hsm;
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for _ in 0..4 {
            handles.push(scope.spawn(move || {
                for _ in 0..25 {
                    let (fresh, wrapped) = hsm.generate_data_key(KeyPurpose::Code).unwrap();
                    same_key(hsm, &wrapped, &fresh);
                    let again = hsm.rewrap_data_key(&wrapped).unwrap();
                    same_key(hsm, &again, &fresh);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// Expands to one `#[test]` per contract behaviour. `$make` is an expression giving a fresh
/// value implementing [`Provider`] (evaluated once per test).
#[macro_export]
macro_rules! hsm_contract_tests {
    ($make:expr) => {
        $crate::hsm_contract_tests!(@each $make;
            every_quorum_unseals_and_fewer_shares_do_not,
            duplicate_corrupted_and_foreign_shares_are_refused,
            data_keys_unwrap_for_every_purpose,
            tampered_wrapped_keys_are_one_integrity_error,
            rotate_rewrap_and_retire,
            state_persists_across_restart,
            sealed_hsm_refuses_key_operations,
            rekey_replaces_shares_and_root_and_keeps_data_keys,
            the_audit_anchor_persists_and_only_moves_forward,
            debug_output_carries_no_key_or_share,
            concurrent_use_from_many_threads
        );
    };
    (@each $make:expr; $($name:ident),*) => {
        /// The `vault::Hsm` contract suite (crate `hsm-contract`).
        mod contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let mut provider = $make;
                    $crate::$name(&mut provider);
                }
            )*
        }
    };
}
