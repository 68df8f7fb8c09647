//! Speed of Pkcs11Hsm on SoftHSM2, each figure next to its baseline measured in the same run:
//!
//! - rewraps/s through `Hsm::rewrap_data_key` vs bare `C_UnwrapKey` + `C_WrapKey` (+ destroy)
//!   on one session with the same mechanism and key sizes;
//! - data keys made and unwrapped (what an import does once per batch, and a lookup once per
//!   key before the code vault caches it) on Pkcs11Hsm vs SimulatedHsm.
//!
//! `cargo run -p hsm-pkcs11 --example pkcs11_speed [N]` (N data keys, default 2000). Not a test:
//! it prints figures and asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use hsm_pkcs11::testing::new_token;
use hsm_pkcs11::{token, InitOptions, Pkcs11Hsm};
use hsm_sim::SimulatedHsm;
use secrecy::SecretString;
use std::time::Instant;
use vault::{Hsm, KeyPurpose, WrappedKey};

fn per_sec(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

fn keys_made(hsm: &dyn Hsm, n: usize) -> (Vec<WrappedKey>, f64, f64) {
    let t = Instant::now();
    let wrapped: Vec<WrappedKey> = (0..n)
        .map(|_| hsm.generate_data_key(KeyPurpose::Code).unwrap().1)
        .collect();
    let made = per_sec(n, t);
    let t = Instant::now();
    for w in &wrapped {
        hsm.unwrap_data_key(w).unwrap();
    }
    (wrapped, made, per_sec(n, t))
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let token = new_token().unwrap();
    let mut shares = Vec::new();
    let (p11, _) = Pkcs11Hsm::init(
        &token.config,
        &token.pin,
        InitOptions {
            shares: 2,
            threshold: 2,
            dev: false,
        },
        &mut |s: &[SecretString]| {
            shares = s.to_vec();
            Ok(())
        },
    )
    .unwrap();
    for s in &shares {
        p11.unseal(s).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sim_shares = Vec::new();
    let (sim, _) = SimulatedHsm::init(
        dir.path(),
        InitOptions {
            shares: 2,
            threshold: 2,
            dev: false,
        },
        &mut |s: &[SecretString]| {
            sim_shares = s.to_vec();
            Ok(())
        },
    )
    .unwrap();
    for s in &sim_shares {
        sim.unseal(s).unwrap();
    }

    let (p11_keys, p11_made, p11_unwrapped) = keys_made(&p11, n);
    let (sim_keys, sim_made, sim_unwrapped) = keys_made(&sim, n);
    println!(
        "data keys made      pkcs11 {p11_made:>9.0}/s   sim {sim_made:>9.0}/s   ratio {:.2}",
        p11_made / sim_made
    );
    println!("data keys unwrapped pkcs11 {p11_unwrapped:>9.0}/s   sim {sim_unwrapped:>9.0}/s   ratio {:.2}", p11_unwrapped / sim_unwrapped);

    p11.rotate().unwrap();
    sim.rotate().unwrap();
    let t = Instant::now();
    for w in &p11_keys {
        p11.rewrap_data_key(w).unwrap();
    }
    let p11_rewrap = per_sec(n, t);
    let t = Instant::now();
    for w in &sim_keys {
        sim.rewrap_data_key(w).unwrap();
    }
    let sim_rewrap = per_sec(n, t);

    // The baseline: bare C_UnwrapKey + C_WrapKey + C_DestroyObject on one logged-in session.
    let ctx = token::context(&token.config.module).unwrap();
    let slot = token::find_token(&ctx, &token.config.token_label).unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let pin = Pkcs11Hsm::insecure_token_pin_from_shares(&shares).unwrap();
    let _ = s.login(UserType::User, Some(&pin));
    let kek = |wrap: bool| {
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(wrap),
                Attribute::Unwrap(true),
                Attribute::Extractable(true),
            ],
        )
        .unwrap()
    };
    let (old, new) = (kek(true), kek(true));
    let data = kek(false);
    let blob = s.wrap_key(&Mechanism::AesKeyWrapPad, old, data).unwrap();
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
    ];
    let t = Instant::now();
    for _ in 0..n {
        let k = s
            .unwrap_key(&Mechanism::AesKeyWrapPad, old, &blob, &template)
            .unwrap();
        s.wrap_key(&Mechanism::AesKeyWrapPad, new, k).unwrap();
        s.destroy_object(k).unwrap();
    }
    let bare = per_sec(n, t);
    println!("rewraps             pkcs11 {p11_rewrap:>9.0}/s   bare C_UnwrapKey+C_WrapKey {bare:>9.0}/s   ratio {:.2}   (sim {sim_rewrap:.0}/s)", p11_rewrap / bare);
    for keys in [2_500u32, 5_000] {
        println!(
            "rotation of 10 M records in {keys} data keys (segments of {} records): ~{:.2} s on SoftHSM",
            10_000_000 / keys,
            f64::from(keys) / p11_rewrap
        );
    }
    drop(s);
    p11.seal();
}
