//! Pkcs11Hsm on SoftHSM2: the shared `vault::Hsm` contract suite, the RFC 5649 known-answer
//! test against aws-lc-rs, and the token-specific checks (an edited state object, keys that
//! stay inside the token, the PIN the shares derive).
//!
//! Every test makes its own token (`hsm_pkcs11::testing::new_token`) in this process's SoftHSM2
//! directory and holds one process-wide lock while it runs: SoftHSM2 tokens of one directory
//! are not touched by two tests at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use hsm_contract::Provider;
use hsm_pkcs11::testing::{new_token, TestToken};
use hsm_pkcs11::{token, InitOptions, Pkcs11Config, Pkcs11Hsm};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Mutex, MutexGuard, PoisonError};
use vault::{Error, Hsm, KeyPurpose, Missing, Refusal, ShareRefusal};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn init_on(token: &TestToken, shares: u8, threshold: u8) -> (Pkcs11Hsm, Vec<SecretString>) {
    let mut out = Vec::new();
    let (hsm, _) = Pkcs11Hsm::init(
        &token.config,
        &token.pin,
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
    (hsm, out)
}

/// Each HSM on a fresh SoftHSM2 token; the lock is held for the whole test.
struct SoftHsm {
    last: Option<Pkcs11Config>,
    _serial: MutexGuard<'static, ()>,
}

impl SoftHsm {
    fn new() -> Self {
        SoftHsm {
            last: None,
            _serial: serial(),
        }
    }
}

impl Provider for SoftHsm {
    fn init(&mut self, shares: u8, threshold: u8) -> (Box<dyn Hsm>, Vec<SecretString>) {
        let token = new_token().unwrap();
        let (hsm, out) = init_on(&token, shares, threshold);
        self.last = Some(token.config.clone());
        (Box::new(hsm), out)
    }

    fn reopen(&mut self) -> Box<dyn Hsm> {
        Box::new(Pkcs11Hsm::open(self.last.as_ref().unwrap()).unwrap())
    }
}

hsm_contract::hsm_contract_tests!(super::SoftHsm::new());

fn unseal(hsm: &Pkcs11Hsm, shares: &[&SecretString]) {
    for s in shares {
        hsm.unseal(s).unwrap();
    }
    assert!(!hsm.status().sealed);
}

/// SoftHSM's RFC 5649 (CKM_AES_KEY_WRAP_PAD) of an extractable key equals aws-lc-rs's KWP under
/// the same KEK: the simulator and a token share one wrapped-key format ("RFC5649").
#[test]
fn softhsm_wrap_pad_equals_aws_lc_rs_kwp() {
    let _g = serial();
    let token = new_token().unwrap();
    let ctx = token::context(&token.config.module).unwrap();
    let slot = token::find_token(&ctx, &token.config.token_label).unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&token.pin)).unwrap();
    for round in 0..8 {
        let mut kek = [0u8; 32];
        let mut key = [0u8; 32];
        s.generate_random_slice(&mut kek).unwrap();
        s.generate_random_slice(&mut key).unwrap();
        if round == 0 {
            // Also a fixed pair: the first bytes 0..32 and 32..64.
            kek = std::array::from_fn(|i| i as u8);
            key = std::array::from_fn(|i| 32 + i as u8);
        }
        let aes = |value: &[u8; 32], wrap: bool| {
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Wrap(wrap),
                Attribute::Unwrap(wrap),
                Attribute::Value(value.to_vec()),
            ]
        };
        let kek_obj = s.create_object(&aes(&kek, true)).unwrap();
        let key_obj = s.create_object(&aes(&key, false)).unwrap();
        let token_wrapped = s
            .wrap_key(&Mechanism::AesKeyWrapPad, kek_obj, key_obj)
            .unwrap();
        let mut out = [0u8; 48];
        let soft = AesKek::new(&AES_256, &kek)
            .unwrap()
            .wrap_with_padding(&key, &mut out)
            .unwrap()
            .to_vec();
        assert_eq!(token_wrapped, soft, "round {round}");
        assert_eq!(token_wrapped.len(), 40);
        // And back: the token unwraps what aws-lc-rs wrapped.
        let back = s
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                kek_obj,
                &soft,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ],
            )
            .unwrap();
        let value = s.get_attributes(back, &[AttributeType::Value]).unwrap();
        assert!(matches!(&value[0], Attribute::Value(v) if v[..] == key[..]));
        for o in [kek_obj, key_obj, back] {
            s.destroy_object(o).unwrap();
        }
    }
    s.logout().unwrap();
}

/// The root and KEK objects are sensitive and never extractable: the token refuses to hand
/// out their value or to wrap them, even while logged in.
#[test]
fn token_keys_never_leave_the_token() {
    let _g = serial();
    let token = new_token().unwrap();
    let (hsm, shares) = init_on(&token, 2, 2);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    let ctx = token::context(&token.config.module).unwrap();
    let slot = token::find_token(&ctx, &token.config.token_label).unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let keys = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    // The root and five purpose keys of term 1.
    assert_eq!(keys.len(), 6);
    let probe = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    for k in keys {
        let attrs = s
            .get_attributes(
                k,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                ],
            )
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)));
        assert!(attrs.contains(&Attribute::Extractable(false)));
        assert!(attrs.contains(&Attribute::Token(true)));
        assert!(
            s.get_attributes(k, &[AttributeType::Value]).is_err() || {
                let v = s.get_attributes(k, &[AttributeType::Value]).unwrap();
                !v.iter().any(|a| matches!(a, Attribute::Value(_)))
            }
        );
        assert!(s.wrap_key(&Mechanism::AesKeyWrapPad, probe, k).is_err());
    }
}

/// The token PIN is what the shares derive: the initial PIN no longer opens the token, and
/// the PIN derived from a quorum does (what an opt-in `pin_file` holds).
#[test]
fn the_shares_derive_the_token_pin_and_the_initial_pin_is_gone() {
    let _g = serial();
    let token = new_token().unwrap();
    let (hsm, shares) = init_on(&token, 3, 2);
    let ctx = token::context(&token.config.module).unwrap();
    let slot = token::find_token(&ctx, &token.config.token_label).unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    assert!(s.login(UserType::User, Some(&token.pin)).is_err());
    drop(s);
    let pin = Pkcs11Hsm::insecure_token_pin_from_shares(&shares[1..3]).unwrap();
    let same =
        Pkcs11Hsm::insecure_token_pin_from_shares(&[shares[2].clone(), shares[0].clone()]).unwrap();
    assert_eq!(pin.expose_secret(), same.expose_secret());
    assert!(hsm.status().sealed);
    hsm.unseal_with_pin(&pin).unwrap();
    assert!(!hsm.status().sealed);
    assert!(hsm.generate_data_key(KeyPurpose::Code).is_ok());
    hsm.seal();
    let wrong = SecretString::from("0".repeat(64));
    assert!(matches!(
        hsm.unseal_with_pin(&wrong),
        Err(Error::Share(ShareRefusal::DoNotOpenToken { .. }))
    ));
    assert!(hsm.status().sealed);
    // Initialising the same token twice is refused and changes nothing.
    let again = Pkcs11Hsm::init(
        &token.config,
        &pin,
        InitOptions {
            shares: 2,
            threshold: 2,
            dev: false,
        },
        &mut |_: &[SecretString]| panic!("must not deliver"),
    );
    assert!(matches!(
        again,
        Err(Error::Refusal(Refusal::HsmExists { place })) if place.contains(&token.config.token_label)
    ));
    unseal(&hsm, &[&shares[0], &shares[1]]);
}

/// The state object is public: whoever edits it without the PIN (here: a term made active
/// again) is found at the next unseal by the CMAC the token computed under the root key.
#[test]
fn an_edited_state_object_is_refused_at_unseal() {
    let _g = serial();
    let token = new_token().unwrap();
    let (hsm, shares) = init_on(&token, 2, 2);
    unseal(&hsm, &[&shares[0], &shares[1]]);
    hsm.rotate().unwrap();
    drop(hsm);
    let ctx = token::context(&token.config.module).unwrap();
    let slot = token::find_token(&ctx, &token.config.token_label).unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let label = hsm_pkcs11::state::STATE_LABEL.as_bytes().to_vec();
    let objs = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(label.clone()),
        ])
        .unwrap();
    assert_eq!(objs.len(), 1);
    let attrs = s.get_attributes(objs[0], &[AttributeType::Value]).unwrap();
    let mut value = Vec::new();
    for a in attrs {
        if let Attribute::Value(v) = a {
            value = v;
        }
    }
    let text = String::from_utf8(value).unwrap();
    let edited = text.replacen("\"decrypt_only\"", "\"active\"", 1);
    assert_ne!(edited, text);
    s.destroy_object(objs[0]).unwrap();
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label),
        Attribute::Value(edited.into_bytes()),
    ])
    .unwrap();
    drop(s);
    let hsm = Pkcs11Hsm::open(&token.config).unwrap();
    hsm.unseal(&shares[0]).unwrap();
    assert!(matches!(hsm.unseal(&shares[1]), Err(Error::Integrity)));
    assert!(hsm.status().sealed);
    assert!(matches!(
        hsm.generate_data_key(KeyPurpose::Code),
        Err(Error::Sealed)
    ));
}

/// A missing token and a token without plico's state are clear errors naming the label.
#[test]
fn a_missing_or_empty_token_is_a_clear_error() {
    let _g = serial();
    let token = new_token().unwrap();
    let err = Pkcs11Hsm::open(&token.config).unwrap_err().to_string();
    assert!(
        err.contains(&token.config.token_label) && err.contains("plico init"),
        "{err}"
    );
    let mut other = token.config.clone();
    other.token_label = "no-such-token".to_string();
    let err = Pkcs11Hsm::open(&other).unwrap_err();
    assert!(
        matches!(&err, Error::Missing(Missing::Token(label)) if label == "no-such-token"),
        "{err:?}"
    );
    let mut bad = token.config.clone();
    bad.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11Hsm::open(&bad).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/libpkcs11.so"), "{err}");
}
