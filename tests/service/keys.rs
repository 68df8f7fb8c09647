//! Key ceremonies over HTTP (issue 8): dual control (self-approval and non-officers refused,
//! lapsed proposals refused), a rotation whose job shows its progress and leaves codes
//! opening, retire refused while keys remain, a rekey after which the old shares stop
//! unsealing and the new ones work, a shred after which a batch's codes are gone, and the
//! crash test: the real `plico serve --dev` killed with SIGKILL in the middle of a rewrap job,
//! restarted, and the job carried on to its end with every code still opening. Every answer
//! body is scanned for shares.

use super::batches::{codes_of, serial};
use super::support::{cf, codes_file, identification, open_with_accounts, Client};
use super::*;
use plico::Settings;
use std::collections::BTreeMap;
use vault::CodePolicy;
use vault::SledStore;
use vault::{Clock, ManualClock};

const SALT: u64 = 0x4B3E;

/// An unsealed service over sled with officers `officer` and `officer2`, an `auditor`, an
/// `operator` and the manufacturer `acme`, over an HSM of `shares` shares (`threshold` to
/// unseal), whose shares are kept.
struct Keys {
    dir: tempfile::TempDir,
    state: AppState,
    c: Client,
    shares: Vec<SecretString>,
}

impl Keys {
    fn new(settings: Settings) -> Keys {
        Self::with_hsm(settings, 1, 1)
    }

    fn with_hsm(settings: Settings, shares: u8, threshold: u8) -> Keys {
        Self::timed(settings, shares, threshold, vault::system_clock())
    }

    /// A service timed by `clock`, which the test moves instead of waiting.
    fn with_clock(settings: Settings, clock: Arc<ManualClock>) -> Keys {
        Self::timed(settings, 1, 1, clock)
    }

    fn timed(settings: Settings, shares: u8, threshold: u8, clock: Arc<dyn Clock>) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (hsm, issued) = init_hsm(dir.path(), shares, threshold);
        for s in issued.iter().take(usize::from(threshold)) {
            hsm.unseal(s).unwrap();
        }
        let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
        let state = AppState::with_clock(hsm, store, &settings, clock)
            .unwrap()
            .with_rekey_share_dir(dir.path().join("ceremony"));
        let staff = open_with_accounts(
            &state,
            &["officer", "officer2", "auditor", "operator", "acme", "cms"],
        );
        let c = Client::new(&state, staff.tokens);
        Keys {
            dir,
            state,
            c,
            shares: issued,
        }
    }

    /// Uploads batch `k` (cards `100 k + 1 ..= 100 k + 20`) as acme: its id.
    async fn upload(&self, k: u64) -> String {
        let body = codes_file(100 * k + 1..=100 * k + 20, SALT);
        let a = self
            .c
            .post_raw("acme", "/v1/batches?manufacturer=ACME", "text/plain", body)
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json["batch"].as_str().unwrap().to_owned()
    }

    async fn propose(&self, who: &str, op: Value) -> Answer {
        self.c.post(who, "/v1/keys/proposals", op).await
    }

    async fn approve(&self, who: &str, id: &str, body: Value) -> Answer {
        self.c
            .post(who, &format!("/v1/keys/proposals/{id}/approve"), body)
            .await
    }

    /// Polls `GET /v1/sys/keys` until the job is finished: every report seen.
    async fn until_done(&self) -> Vec<Value> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.c.get("officer", "/v1/sys/keys").await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            let done = a.json["job"]["state"] != "running";
            seen.push(a.json);
            if done {
                return seen;
            }
            assert!(Instant::now() < deadline, "the key job did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Card `n` opens to its codes (checked in the vault: no endpoint returns codes).
    fn opens(&self, n: u64) -> bool {
        match super::support::released_codes(&self.state, &serial(n)) {
            Ok(Some(c)) => {
                let (pin, puk) = codes_of(n, SALT);
                assert_eq!(c.pin.expose_secret(), pin.as_bytes(), "card {n}");
                assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
                true
            }
            _ => false,
        }
    }

    /// No answer so far holds any of `secrets`.
    fn assert_no_secret_in_answers(&self, secrets: &[String]) {
        for body in self.c.bodies.lock().unwrap().iter() {
            for s in secrets {
                assert!(
                    !body.contains(s.as_str()),
                    "an answer holds a secret: {body}"
                );
            }
        }
    }
}

fn cie() -> Settings {
    Settings {
        codes: CodePolicy::CIE,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_control_refuses_self_approval_and_non_officers() {
    let k = Keys::new(cie());
    k.upload(1).await;

    // Only officers propose.
    for who in ["operator", "auditor", "acme"] {
        let a = k.propose(who, json!({"op": "rotate", "reason": "x"})).await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    // Bad bodies are refused by field, without a proposal.
    let a = k.propose("officer", json!({"op": "rotate"})).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = k
        .propose("officer", json!({"op": "melt", "reason": "x"}))
        .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let a = k
        .propose("officer", json!({"op": "retire", "term": 1, "reason": "x"}))
        .await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    let a = k
        .propose("officer", json!({"op": "retire", "term": 9, "reason": "x"}))
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    let a = k
        .propose(
            "officer",
            json!({"op": "rotate", "reason": "yearly, SEC-142"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json["proposal"]["id"].as_u64().unwrap();
    let id = format!("kp{id:06}");
    assert_eq!(a.json["proposal"]["state"], "open");
    let term1_kcv = k.state.hsm.status().terms[0].kcv.to_string();
    assert_eq!(a.json["proposal"]["kcv"], term1_kcv);

    // The proposer cannot approve it, whoever is typing; nor can a non-officer.
    let a = k.approve("officer", &id, json!({})).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    for who in ["auditor", "operator"] {
        let a = k.approve(who, &id, json!({})).await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    let a =
        k.c.get("officer", &format!("/v1/keys/proposals/{id}"))
            .await;
    assert_eq!(a.json["proposal"]["state"], "open", "{}", a.text);
    let a = k.c.get("auditor", "/v1/keys/proposals").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["proposals"].as_array().unwrap().len(), 1);

    // Unknown and malformed ids.
    let a = k.approve("officer2", "kp999999", json!({})).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = k.approve("officer2", "nonsense", json!({})).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    // Shares are for a rekey only.
    let a = k
        .approve("officer2", &id, json!({"shares": ["plico-share:v1:x"]}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // A second officer approves; then it cannot be approved or withdrawn again.
    let a = k.approve("officer2", &id, json!({})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    k.until_done().await;
    let a = k.approve("officer2", &id, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    let a =
        k.c.post(
            "officer",
            &format!("/v1/keys/proposals/{id}/withdraw"),
            json!({}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");

    // Withdrawal of an open proposal, by any officer.
    let a = k
        .propose("officer", json!({"op": "rotate", "reason": "again"}))
        .await;
    let id2 = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a =
        k.c.post(
            "officer2",
            &format!("/v1/keys/proposals/{id2}/withdraw"),
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["proposal"]["state"], "withdrawn");

    // A rekey needs a quorum of current shares in the approval, never as a plain approval.
    let a = k
        .propose(
            "officer",
            json!({"op": "rekey", "shares": 3, "threshold": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "dev HSM allows 1: {}",
        a.text
    );
    let id3 = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k.approve("officer2", &id3, json!({})).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    let audited: Vec<String> = k
        .state
        .audit
        .query(&vault::Query {
            action: Some("key.".to_owned()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "key.propose",
        "key.approve",
        "key.rotate",
        "key.done",
        "key.withdraw",
    ] {
        assert!(audited.iter().any(|a| a == action), "{action}: {audited:?}");
    }
    let secrets: Vec<String> = k.shares.iter().map(secret_part).collect();
    k.assert_no_secret_in_answers(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_not_approved_in_its_window_lapses() {
    let clock = Arc::new(ManualClock::starting_now());
    let k = Keys::with_clock(
        Settings {
            key_approval_window_ms: 60_000,
            ..cie()
        },
        clock.clone(),
    );
    let a = k
        .propose("officer", json!({"op": "rotate", "reason": "x"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    assert_eq!(
        a.json["proposal"]["expires_ms"].as_u64().unwrap(),
        clock.now_ms() + 60_000,
        "{}",
        a.text
    );
    // The last millisecond of the window: still open.
    clock.advance(Duration::from_millis(59_999));
    let a =
        k.c.get("auditor", &format!("/v1/keys/proposals/{id}"))
            .await;
    assert_eq!(a.json["proposal"]["state"], "open", "{}", a.text);
    clock.advance(Duration::from_millis(1));
    let a = k.approve("officer2", &id, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(a.text.contains("lapsed"), "{}", a.text);
    let a =
        k.c.get("auditor", &format!("/v1/keys/proposals/{id}"))
            .await;
    assert_eq!(a.json["proposal"]["state"], "lapsed", "{}", a.text);
    // Nothing ran: still one term.
    assert_eq!(k.state.hsm.status().terms.len(), 1);
    let a = k.approve("officer2", &id, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
}

/// The warnings and recommendations of `GET /v1/sys/keys` that name the active term.
async fn term_advice(k: &Keys) -> (Vec<String>, Vec<String>) {
    let a = k.c.get("officer", "/v1/sys/keys").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let term = &a.json["terms"][0];
    assert_eq!(term["state"], "active", "{}", a.text);
    let name = format!("{} (KCV {})", term["id"], term["kcv"].as_str().unwrap());
    let recommendations = strings(&a.json["recommendations"])
        .into_iter()
        .filter(|r| r.contains(&name))
        .collect();
    (strings(&term["warnings"]), recommendations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_status_warns_as_the_active_term_nears_then_passes_its_cryptoperiod() {
    let clock = Arc::new(ManualClock::starting_now());
    let k = Keys::with_clock(cie(), clock.clone());
    let day = Duration::from_secs(86_400);
    // The default term period is 365 days, warned about from 30 days before its end.
    let (warnings, recommendations) = term_advice(&k).await;
    assert!(
        warnings.is_empty() && recommendations.is_empty(),
        "{warnings:?}"
    );

    clock.advance(day * 334);
    let (warnings, _) = term_advice(&k).await;
    assert!(warnings.is_empty(), "{warnings:?}");

    clock.advance(day);
    let (warnings, recommendations) = term_advice(&k).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("335 days old, near the end of its 365-day period"),
        "{warnings:?}"
    );
    assert!(
        recommendations[0].starts_with("rotate: "),
        "{recommendations:?}"
    );

    clock.advance(day * 30);
    let (warnings, recommendations) = term_advice(&k).await;
    assert!(
        warnings[0].contains("365 days old, past its 365-day period"),
        "{warnings:?}"
    );
    assert_eq!(recommendations.len(), 1, "{recommendations:?}");
    assert!(
        recommendations[0].starts_with("rotate: "),
        "{recommendations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_shows_progress_then_retire_destroys_the_old_term() {
    let k = Keys::new(Settings {
        rewrap_chunk: 1,
        rewrap_pause_ms: 150,
        ..cie()
    });
    for b in 1..=5 {
        k.upload(b).await;
    }
    let a = k
        .propose("officer", json!({"op": "rotate", "reason": "yearly"}))
        .await;
    let id = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k.approve("officer2", &id, json!({})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json["proposal"]["state"], "running");
    assert_eq!(a.json["job"]["phase"], "rewrap", "{}", a.text);
    let total = a.json["job"]["total"].as_u64().unwrap();
    assert!(total >= 5, "{}", a.text);

    // While it runs: term 1 still wraps keys, so retiring it is refused with the count.
    let a = k
        .propose(
            "officer",
            json!({"op": "retire", "term": 1, "reason": "rotated"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(
        a.json["proposal"]["kcv"],
        k.state.hsm.status().terms[0].kcv.to_string()
    );
    let retire = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k.approve("officer2", &retire, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(a.text.contains("still wraps"), "{}", a.text);
    // Another job cannot start meanwhile.
    let a = k
        .propose("officer", json!({"op": "rotate", "reason": "again"}))
        .await;
    let again = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k.approve("officer2", &again, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    // Codes open throughout.
    assert!(k.opens(101) && k.opens(520));

    let seen = k.until_done().await;
    let partial = seen.iter().any(|s| {
        let (d, t) = (
            s["job"]["done"].as_u64().unwrap(),
            s["job"]["total"].as_u64().unwrap(),
        );
        s["job"]["state"] == "running" && d > 0 && d < t
    });
    assert!(partial, "no report showed the job in progress: {seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(last["job"]["state"], "done", "{last}");
    assert_eq!(last["job"]["done"], total);
    let terms = last["terms"].as_array().unwrap();
    assert_eq!(terms.len(), 2);
    assert_eq!(terms[0]["state"], "decrypt_only");
    assert_eq!(terms[0]["data_keys"], 0);
    assert_eq!(terms[1]["state"], "active");
    assert_eq!(terms[1]["kcv"], last["job"]["target_kcv"]);
    for key in last["data_keys"].as_array().unwrap() {
        assert_eq!(key["term"], 2, "{key}");
        assert!(key["kcv"].as_str().unwrap().len() == 6, "{key}");
    }
    assert!(
        last["recommendations"].to_string().contains("retire"),
        "{last}"
    );
    let a =
        k.c.get("officer", &format!("/v1/keys/proposals/{id}"))
            .await;
    assert_eq!(a.json["proposal"]["state"], "done", "{}", a.text);
    for n in [101, 120, 301, 520] {
        assert!(k.opens(n), "card {n}");
    }

    // Now the retire goes through: the term is destroyed at once.
    let a = k.approve("officer2", &retire, json!({})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["proposal"]["state"], "done", "{}", a.text);
    assert_eq!(
        k.state.hsm.status().terms[0].state,
        vault::TermState::Retired
    );
    assert!(k.opens(101));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_hands_out_new_shares_in_files_and_the_old_ones_stop_working() {
    let k = Keys::with_hsm(cie(), 3, 2);
    k.upload(1).await;
    let before = k.state.hsm.status();

    // A threshold below 2 is refused outside dev.
    let a = k
        .propose(
            "officer",
            json!({"op": "rekey", "shares": 2, "threshold": 1, "reason": "x"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = k
        .propose(
            "officer",
            json!({"op": "rekey", "shares": 4, "threshold": 2, "reason": "custodian left"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["proposal"]["kcv"], before.root_kcv.to_string());
    let id = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let old: Vec<&str> = k.shares.iter().map(|s| s.expose_secret()).collect();

    // The proposer cannot approve, even with shares; one share is not a quorum.
    let a = k
        .approve("officer", &id, json!({"shares": [old[0], old[1]]}))
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = k
        .approve("officer2", &id, json!({"shares": [old[0]]}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    let a = k
        .approve(
            "officer2",
            &id,
            json!({"shares": ["plico-share:v1:garbage-garbage-garbage-garbage"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(!a.text.contains("garbage-garbage-garbage"), "{}", a.text);
    let ceremony = k.dir.path().join("ceremony");
    let leftovers = std::fs::read_dir(&ceremony)
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "a refused rekey left share files");
    assert_eq!(k.state.hsm.status().share_set, before.share_set);

    let a = k
        .approve("officer2", &id, json!({"shares": [old[1], old[2]]}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["proposal"]["state"], "done");
    let after = k.state.hsm.status();
    assert_ne!(after.share_set, before.share_set);
    assert_ne!(after.root_kcv, before.root_kcv);
    assert_eq!((after.shares, after.threshold), (4, 2));
    assert_eq!(a.json["rekey"]["share_set"], after.share_set);
    assert_eq!(a.json["rekey"]["root_kcv"], after.root_kcv.to_string());
    let files: Vec<PathBuf> = a.json["rekey"]["share_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 4);
    let new: Vec<SecretString> = files
        .iter()
        .map(|f| {
            assert!(f.starts_with(&ceremony), "{}", f.display());
            assert_eq!(mode(f), 0o600, "{}", f.display());
            SecretString::from(std::fs::read_to_string(f).unwrap().trim().to_owned())
        })
        .collect();
    assert_eq!(mode(f_parent(&files[0])), 0o700);

    // Seal; an old share no longer unseals, new ones do.
    k.state.seal();
    let a = unseal(&k.c.app, &k.shares[0]).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    let a = unseal(&k.c.app, &new[0]).await;
    assert_eq!(a.json["progress"], 1, "{}", a.text);
    let a = unseal(&k.c.app, &new[3]).await;
    assert_eq!(a.json["sealed"], false, "{}", a.text);
    assert!(k.opens(101));

    // A second rekey with the old shares is refused; nothing changes.
    let a = k
        .propose(
            "officer2",
            json!({"op": "rekey", "shares": 3, "threshold": 2, "reason": "again"}),
        )
        .await;
    let id2 = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k
        .approve("officer", &id2, json!({"shares": [old[0], old[2]]}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "share_refused");
    assert_eq!(k.state.hsm.status().share_set, after.share_set);

    let mut secrets: Vec<String> = k.shares.iter().map(secret_part).collect();
    secrets.extend(new.iter().map(secret_part));
    k.assert_no_secret_in_answers(&secrets);
}

fn f_parent(p: &Path) -> &Path {
    p.parent().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_over_http_makes_a_batch_codes_gone() {
    let k = Keys::new(cie());
    let gone = k.upload(1).await;
    let kept = k.upload(2).await;
    assert!(k.opens(101) && k.opens(201));
    let a = k
        .propose(
            "officer",
            json!({"op": "shred", "batch": 999, "reason": "x"}),
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let number: u64 = gone.trim_start_matches('b').parse().unwrap();
    let a = k
        .propose(
            "officer",
            json!({"op": "shred", "batch": number, "reason": "revoked, past retention"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let record = k
        .state
        .codes
        .batch(vault::BatchId(number))
        .unwrap()
        .unwrap();
    assert_eq!(
        a.json["proposal"]["kcv"].as_str(),
        record.data_key_kcv.as_deref()
    );
    let id = format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap());
    let a = k.approve("officer2", &id, json!({})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let last = k.until_done().await.pop().unwrap();
    assert_eq!(last["job"]["state"], "done", "{last}");
    // The shred's job rotated and retired every older term.
    let terms = last["terms"].as_array().unwrap();
    assert_eq!(terms[0]["state"], "retired", "{last}");
    assert_eq!(terms[1]["state"], "active", "{last}");

    let a = k.c.get("acme", &format!("/v1/batches/{gone}")).await;
    assert_eq!(a.json["state"], "shredded", "{}", a.text);
    for n in 101..=120 {
        assert!(!k.opens(n), "card {n} of the shredded batch still opens");
    }
    for n in 201..=220 {
        assert!(k.opens(n), "card {n} of batch {kept}");
    }
    // A shredded batch cannot be shredded again.
    let a = k
        .propose(
            "officer",
            json!({"op": "shred", "batch": number, "reason": "x"}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
}

// ---------------------------------------------------------------------------------------------
// The crash test: the real binary killed in the middle of a rewrap job
// ---------------------------------------------------------------------------------------------

const CRASH_BATCHES: u64 = 24;

fn start_slow(data: &Path, pause_ms: u64) -> Server {
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .env("PLICO_KEYS_REWRAP_CHUNK", "1")
        .env("PLICO_KEYS_REWRAP_PAUSE_MS", pause_ms.to_string())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data);
    Server::start(cmd)
}

/// The CNS code file of batch `b` (cards `100 b + 1 ..= 100 b + 10`): 5-digit PINs.
fn cns_file(b: u64) -> String {
    super::support::cns_codes_file(100 * b + 1..=100 * b + 10, SALT)
}

struct Real {
    http: reqwest::Client,
    url: String,
    tokens: BTreeMap<&'static str, String>,
    bodies: Vec<String>,
}

impl Real {
    async fn call(
        &mut self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.tokens[who]);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.bodies.push(text);
        (status, json)
    }

    async fn keys(&mut self) -> Value {
        let (status, v) = self
            .call("auditor", reqwest::Method::GET, "/v1/sys/keys", None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_job_killed_with_sigkill_finishes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start_slow(&data, 0);
    let http = http_client(None);
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut tokens = BTreeMap::from([("admin", admin.clone())]);
    for (name, role) in [
        ("officer", "officer"),
        ("officer2", "officer"),
        ("auditor", "auditor"),
        ("acme", "manufacturer"),
    ] {
        let res = http
            .post(format!("{}/v1/accounts", server.url))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("crash {name}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        tokens.insert(name, v["token"].as_str().unwrap().to_owned());
    }
    let mut real = Real {
        http: http.clone(),
        url: server.url.clone(),
        tokens,
        bodies: Vec::new(),
    };
    for b in 1..=CRASH_BATCHES {
        let res = http
            .post(format!("{}/v1/batches?manufacturer=ACME", real.url))
            .bearer_auth(&real.tokens["acme"])
            .header(header::CONTENT_TYPE, "text/plain")
            .body(cns_file(b))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "{}", res.text().await.unwrap());
    }
    // Restart slow: one key a chunk, 150 ms after each.
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    let server = start_slow(&data, 150);
    real.url = server.url.clone();

    let (status, p) = real
        .call(
            "officer",
            reqwest::Method::POST,
            "/v1/keys/proposals",
            Some(json!({"op": "rotate", "reason": "crash test"})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let id = format!("kp{:06}", p["proposal"]["id"].as_u64().unwrap());
    let (status, a) = real
        .call(
            "officer2",
            reqwest::Method::POST,
            &format!("/v1/keys/proposals/{id}/approve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{a}");
    let total = a["job"]["total"].as_u64().unwrap();
    assert!(total >= CRASH_BATCHES, "{a}");
    let target = a["job"]["target"].as_u64().unwrap();

    // Kill it once a few chunks are done, well before the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done_at_kill = loop {
        let s = real.keys().await;
        let done = s["job"]["done"].as_u64().unwrap();
        if done >= 3 {
            break done;
        }
        assert!(Instant::now() < deadline, "the job did not start: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut child = {
        let mut s = server;
        s.child.take().unwrap()
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        done_at_kill < total,
        "killed too late: {done_at_kill} of {total}"
    );
    eprintln!("key crash test: killed at {done_at_kill} of {total} data keys");

    // Restarted (and self-unsealed), the service carries the job on to its end.
    let server = start_slow(&data, 0);
    real.url = server.url.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let s = real.keys().await;
        if s["job"]["state"] != "running" {
            break s;
        }
        assert!(Instant::now() < deadline, "the job did not resume: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last["job"]["state"], "done", "{last}");
    assert_eq!(last["job"]["target"], target, "rotated twice? {last}");
    assert_eq!(
        last["terms"].as_array().unwrap().len(),
        2,
        "rotated twice? {last}"
    );
    for key in last["data_keys"].as_array().unwrap() {
        assert_eq!(key["term"].as_u64(), Some(target), "{key}");
    }
    let (_, p) = real
        .call(
            "auditor",
            reqwest::Method::GET,
            &format!("/v1/keys/proposals/{id}"),
            None,
        )
        .await;
    assert_eq!(p["proposal"]["state"], "done", "{p}");
    let (_, report) = real
        .call("auditor", reqwest::Method::GET, "/v1/audit/verify", None)
        .await;
    assert!(report["problem"].is_null(), "audit chain damaged: {report}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // Offline: every card of every batch still opens to its codes.
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let audit = vault::AuditLog::open(store.clone(), vault::DEFAULT_CHECKPOINT_EVERY).unwrap();
    let (codes, _) = vault::CodeVault::open(store).unwrap();
    let hsm = SimulatedHsm::open(&data).unwrap();
    let share = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    let share = SecretString::from(share.trim().to_owned());
    hsm.unseal(&share).unwrap();
    for b in 1..=CRASH_BATCHES {
        for n in 100 * b + 1..=100 * b + 10 {
            let c = super::support::release_from(&codes, &audit, &hsm, &serial(n))
                .unwrap()
                .unwrap();
            let (pin, puk) = codes_of(n, SALT);
            assert_eq!(c.pin.expose_secret(), &pin.as_bytes()[..5], "card {n}");
            assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
        }
    }
    let secret = secret_part(&share);
    for body in &real.bodies {
        assert!(
            !body.contains(&secret),
            "an answer holds the dev share: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 14: a shred says what it will do; approval shows it and checks the KCV
// ---------------------------------------------------------------------------------------------

/// Holders of cards 101–103 (batch 1): codice fiscale (15), given names, surname, card.
const SHRED_HOLDERS: [(&str, &str, &str, u64); 3] = [
    ("DNGNCL80A01F839", "Nicolò", "D'Angelo", 101),
    ("MLLZOE92M45F205", "Zoë", "Müller", 102),
    ("PRRGNS75D50L219", "Agnès", "Perrière", 103),
];

const REGISTRY_HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";

fn shred_registry() -> String {
    let rows = SHRED_HOLDERS.iter().map(|(cf15, given, surname, n)| {
        format!(
            "{};{given};{surname};1980-01-01;holder{n}@example.it;+39333111{n:04};Via Roma {n}, 00100 Roma;false;{};2032-12-31;\n",
            cf(cf15),
            serial(*n)
        )
    });
    std::iter::once(REGISTRY_HEADER.to_owned())
        .chain(rows)
        .collect()
}

fn pid(a: &Answer) -> String {
    format!("kp{:06}", a.json["proposal"]["id"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_says_what_it_will_do_and_revokes_the_cards_that_lose_their_codes() {
    let k = Keys::new(cie());
    let a =
        k.c.post_raw("cms", "/v1/registry", "text/csv", shred_registry())
            .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let gone = k.upload(1).await;
    let kept = k.upload(2).await;
    let number: u64 = gone.trim_start_matches('b').parse().unwrap();
    let card = |n: u64, what: &str| format!("/v1/cards/{}/{what}", serial(n));
    for n in [101, 102] {
        let a =
            k.c.post("operator", &card(n, "activate"), identification(n))
                .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    // Card 101: a mailer queued; card 102: part A at the counter, part B queued by e-mail.
    let a =
        k.c.post("cms", &card(101, "dispatch"), json!({"plan": "mailer"}))
            .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a =
        k.c.post(
            "cms",
            &card(102, "dispatch"),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let pending: Vec<cards::Job> = [101, 102]
        .iter()
        .flat_map(|n| k.state.cms.jobs_of(&serial(*n)).unwrap())
        .collect();
    assert_eq!(pending.len(), 3);

    // Without force: refused, naming the cards that still need their codes; nothing written.
    let a = k
        .propose(
            "officer",
            json!({"op": "shred", "batch": number, "reason": "compromised"}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(
        a.text.contains("2 active") && a.text.contains("force"),
        "{}",
        a.text
    );
    let a = k.c.get("auditor", "/v1/keys/proposals").await;
    assert_eq!(
        a.json["proposals"].as_array().unwrap().len(),
        0,
        "{}",
        a.text
    );

    // With force: the proposal lists what it will do before anyone approves.
    let shred = json!({"op": "shred", "batch": number, "force": true, "reason": "compromised"});
    let a = k.propose("officer", shred.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let first = pid(&a);
    let impact = &a.json["proposal"]["impact"];
    let cards = impact["cards"].as_array().unwrap();
    assert_eq!(cards[0]["state"], "active", "active first: {impact}");
    assert_eq!(cards[0]["count"], 2);
    assert_eq!(cards[0]["serials"], json!([serial(101), serial(102)]));
    assert_eq!(cards[1]["state"], "issued");
    assert_eq!(cards[1]["serials"], json!([serial(103)]));
    assert_eq!(cards[2]["state"], "not_registered");
    assert_eq!(cards[2]["count"], 17);
    assert_eq!(cards[2]["serials"].as_array().unwrap().len(), 17);
    assert_eq!(impact["jobs"]["count"], 3, "{impact}");
    let listed: Vec<u64> = impact["jobs"]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_u64().unwrap())
        .collect();
    let mut want: Vec<u64> = pending.iter().map(|j| j.id).collect();
    want.sort();
    assert_eq!(listed, want);
    // Every key and term: the data key destroyed, term 1 rotated and then retired.
    let record = k
        .state
        .codes
        .batch(vault::BatchId(number))
        .unwrap()
        .unwrap();
    let term1 = k.state.hsm.status().terms[0].clone();
    let keys: Vec<(String, String, String)> = impact["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["action"].as_str().unwrap().to_owned(),
                k["key"].as_str().unwrap().to_owned(),
                k["kcv"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let data_key = format!("data key {}", record.data_key.unwrap());
    assert_eq!(
        keys,
        vec![
            (
                "destroy".into(),
                data_key,
                record.data_key_kcv.clone().unwrap()
            ),
            ("rotate".into(), "term 1".into(), term1.kcv.to_string()),
            ("rewrap".into(), "data keys".into(), String::new()),
            ("retire".into(), "term 1".into(), term1.kcv.to_string()),
        ]
    );
    // The approver sees the same list and the KCV.
    let shown =
        k.c.get("officer2", &format!("/v1/keys/proposals/{first}"))
            .await;
    assert_eq!(shown.json["proposal"]["impact"], *impact);
    assert_eq!(
        shown.json["proposal"]["kcv"].as_str(),
        record.data_key_kcv.as_deref()
    );

    // Card 103 is activated meanwhile: the shred would now revoke more than it says.
    let a =
        k.c.post("operator", &card(103, "activate"), identification(103))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = k.approve("officer2", &first, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(
        a.text.contains("3 active card(s), 2 when proposed"),
        "{}",
        a.text
    );

    let a = k.propose("officer", shred).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = pid(&a);
    assert_eq!(a.json["proposal"]["impact"]["cards"][0]["count"], 3);

    // An unexpected KCV: refused, nothing changes.
    let a = k
        .approve("officer2", &id, json!({"expect_kcv": "000000"}))
        .await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(a.text.contains("000000"), "{}", a.text);
    let a = k
        .approve("officer2", &id, json!({"expect_kcv": "not hex"}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a =
        k.c.get("auditor", &format!("/v1/keys/proposals/{id}"))
            .await;
    assert_eq!(a.json["proposal"]["state"], "open", "{}", a.text);
    assert!(k.opens(101));
    for j in &pending {
        let now = k.state.cms.job(j.id).unwrap().unwrap();
        assert_eq!(now.state, j.state, "job {}", j.id);
    }

    // The expected KCV: approved; cards revoked with reason codes_destroyed, jobs cancelled.
    let a = k
        .approve(
            "officer2",
            &id,
            json!({"expect_kcv": record.data_key_kcv.clone().unwrap().to_lowercase()}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let last = k.until_done().await.pop().unwrap();
    assert_eq!(last["job"]["state"], "done", "{last}");
    for n in [101, 102, 103] {
        let a = k.c.get("cms", &format!("/v1/cards/{}", serial(n))).await;
        assert_eq!(a.json["state"], "revoked", "{}", a.text);
        assert_eq!(a.json["reason"], "codes_destroyed", "{}", a.text);
        assert_eq!(a.json["codes_held"], false, "{}", a.text);
    }
    for j in &pending {
        let now = k.state.cms.job(j.id).unwrap().unwrap();
        assert_eq!(now.state.as_str(), "cancelled", "job {}", j.id);
    }
    let a = k.c.get("acme", &format!("/v1/batches/{gone}")).await;
    assert_eq!(a.json["state"], "shredded", "{}", a.text);
    assert!(k.opens(201), "batch {kept}");
    // Only the term it named was retired.
    let terms = last["terms"].as_array().unwrap();
    assert_eq!(terms.len(), 2, "{last}");
    assert_eq!(terms[0]["state"], "retired", "{last}");
    let events = k
        .state
        .audit
        .query(&vault::Query {
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .events;
    let revokes = events.iter().filter(|e| e.action == "card.revoke").count();
    let cancels = events
        .iter()
        .filter(|e| e.action == "dispatch.cancel")
        .count();
    assert_eq!((revokes, cancels), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// Issue 14: a dev rekey cannot lock anyone out; approve shows and checks the KCV (CLI)
// ---------------------------------------------------------------------------------------------

/// A real server's officers (`officer`, `officer2`), auditor and manufacturer, made with the
/// admin token `serve --dev` wrote; their tokens also in files under `dir`.
async fn real_staff(url: &str, data: &Path, dir: &Path) -> Real {
    let http = http_client(None);
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut tokens = BTreeMap::from([("admin", admin.clone())]);
    for (name, role) in [
        ("officer", "officer"),
        ("officer2", "officer"),
        ("auditor", "auditor"),
        ("acme", "manufacturer"),
    ] {
        let res = http
            .post(format!("{url}/v1/accounts"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("dev {name}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        let token = v["token"].as_str().unwrap().to_owned();
        std::fs::write(dir.join(format!("{name}.token")), format!("{token}\n")).unwrap();
        tokens.insert(name, token);
    }
    Real {
        http,
        url: url.to_owned(),
        tokens,
        bodies: Vec::new(),
    }
}

/// Proposes a rekey of the dev HSM to `threshold` of `shares` and approves it with the dev
/// share, over HTTP: the new share files.
async fn dev_rekey(real: &mut Real, data: &Path, shares: u8, threshold: u8) -> Vec<PathBuf> {
    let (status, p) = real
        .call(
            "officer",
            reqwest::Method::POST,
            "/v1/keys/proposals",
            Some(
                json!({"op": "rekey", "shares": shares, "threshold": threshold,
                        "reason": "custodians"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let id = format!("kp{:06}", p["proposal"]["id"].as_u64().unwrap());
    let dev = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    let (status, a) = real
        .call(
            "officer2",
            reqwest::Method::POST,
            &format!("/v1/keys/proposals/{id}/approve"),
            Some(json!({"shares": [dev.trim()]})),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    a["rekey"]["share_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_shows_what_it_approves_and_checks_the_expected_kcv_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = super::support::serve_dev(&data);
    let mut real = real_staff(&server.url, &data, tmp.path()).await;
    let keys_cli = |who: &str| {
        let mut c = plico();
        c.args(["keys", "--addr", &server.url, "--token-file"])
            .arg(tmp.path().join(format!("{who}.token")));
        c
    };

    // Approve shows what is approved, and --expect-kcv refuses a mismatch, changing nothing.
    let (status, p) = real
        .call(
            "officer",
            reqwest::Method::POST,
            "/v1/keys/proposals",
            Some(json!({"op": "rotate", "reason": "yearly"})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let id = format!("kp{:06}", p["proposal"]["id"].as_u64().unwrap());
    let kcv = p["proposal"]["kcv"].as_str().unwrap().to_owned();
    let out = run_ok(keys_cli("officer2").args(["show", &id]));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("rotate term 1 (KCV {kcv})")),
        "{shown}"
    );
    let err = run_fails(keys_cli("officer2").args(["approve", &id, "--expect-kcv", "000000"]));
    assert!(err.contains("not the expected 000000"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (_, now) = real
        .call(
            "auditor",
            reqwest::Method::GET,
            &format!("/v1/keys/proposals/{id}"),
            None,
        )
        .await;
    assert_eq!(now["proposal"]["state"], "open", "{now}");
    let out = run_ok(keys_cli("officer2").args(["approve", &id, "--wait", "--expect-kcv", &kcv]));
    let approved = String::from_utf8_lossy(&out.stdout);
    assert!(approved.contains("approving:"), "{approved}");
    assert!(
        approved.contains(&format!("kcv:       {kcv}")),
        "{approved}"
    );
    assert!(
        approved.contains(&format!("rotate term 1 (KCV {kcv})")),
        "{approved}"
    );

    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_rekey_to_one_share_replaces_the_dev_share_and_the_next_start_unseals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = super::support::serve_dev(&data);
    let mut real = real_staff(&server.url, &data, tmp.path()).await;
    // A rekey that stays 1-of-1 replaces dev-share.txt, so the next start unseals itself.
    let old = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    let files = dev_rekey(&mut real, &data, 1, 1).await;
    assert_eq!(files.len(), 1);
    let new = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    assert_ne!(new.trim(), old.trim());
    assert_eq!(
        new.trim(),
        std::fs::read_to_string(&files[0]).unwrap().trim()
    );
    assert_eq!(mode(&data.join("dev-share.txt")), 0o600);
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    let server = super::support::serve_dev(&data);
    real.url = server.url.clone();
    let s = real.keys().await;
    assert_eq!(s["sealed"], false, "{s}");
    assert_eq!(s["threshold"], 1, "{s}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // A crash after the HSM committed but before the new share was moved into place: the old
    // share is back in dev-share.txt, the new one pending. The next start repairs it.
    let share = data.join("dev-share.txt");
    let pending = data.join("dev-share.txt.new");
    std::fs::rename(&share, &pending).unwrap();
    std::fs::write(&share, &old).unwrap();
    let server = super::support::serve_dev(&data);
    real.url = server.url.clone();
    assert_eq!(real.keys().await["sealed"], false);
    assert_eq!(std::fs::read_to_string(&share).unwrap().trim(), new.trim());
    assert!(!pending.exists());
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    for secret in [
        secret_part(&SecretString::from(old.trim().to_owned())),
        secret_part(&SecretString::from(new.trim().to_owned())),
    ] {
        for body in &real.bodies {
            assert!(!body.contains(&secret), "an answer holds a share: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_hsm_rekeyed_to_two_of_three_opens_as_a_production_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = super::support::serve_dev(&data);
    let mut real = real_staff(&server.url, &data, tmp.path()).await;
    let res = real
        .http
        .post(format!("{}/v1/batches?manufacturer=ACME", real.url))
        .bearer_auth(&real.tokens["acme"])
        .header(header::CONTENT_TYPE, "text/plain")
        .body(cns_file(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let files = dev_rekey(&mut real, &data, 3, 2).await;
    assert_eq!(files.len(), 3);
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // `serve --dev` says clearly what the directory now is and how to open it.
    let err = run_fails(
        plico()
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data),
    );
    assert!(
        err.contains("production HSM") && err.contains("plico unseal"),
        "{err}"
    );

    // `serve --data DIR` opens it sealed; two of the new shares unseal it.
    let mut production = plico();
    production
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::start(production);
    let readyz = format!("{}/readyz", server.url);
    assert_eq!(status_code(&real.http, &readyz).await, 503);
    let out = run_ok(
        plico()
            .args(["unseal", "--addr", &server.url])
            .arg(&files[0])
            .arg(&files[2]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("unsealed"));
    assert_eq!(status_code(&real.http, &readyz).await, 200);
    real.url = server.url.clone();
    let s = real.keys().await;
    assert_eq!(
        (s["threshold"].as_u64(), s["shares"].as_u64()),
        (Some(2), Some(3)),
        "{s}"
    );
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // Offline: the codes still open under the new shares.
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let audit = vault::AuditLog::open(store.clone(), vault::DEFAULT_CHECKPOINT_EVERY).unwrap();
    let (codes, _) = vault::CodeVault::open(store).unwrap();
    let hsm = SimulatedHsm::open(&data).unwrap();
    assert!(!hsm.status().dev);
    for f in [&files[1], &files[2]] {
        let share = std::fs::read_to_string(f).unwrap();
        hsm.unseal(&SecretString::from(share.trim().to_owned()))
            .unwrap();
    }
    let c = super::support::release_from(&codes, &audit, &hsm, &serial(101))
        .unwrap()
        .unwrap();
    let (pin, _) = codes_of(101, SALT);
    assert_eq!(c.pin.expose_secret(), &pin.as_bytes()[..5]);
}
