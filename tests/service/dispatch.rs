//! Delivery of codes over HTTP (the service side of the outbox), on a real sled store: a
//! dispatch by `counter(2)+sms` and the parts it makes, each part's state in the card's
//! status, the refusals (a suspended card, a bad plan, a mobile number changed since the last
//! identification until the holder is identified again), a resend of one part, the
//! per-account rate limit of resends, the roles, and the start-up recovery of jobs left
//! `sending`. Every answer body is scanned for the cards' codes and the holders' contacts and
//! idempotency keys: none may appear. No worker runs: jobs stay where the API puts them.

use super::batches::{codes_of, serial};
use super::support::{
    assert_refusal, cf, cie_state, codes_file, identification, open_with_accounts, reason_of,
    Client,
};
use super::*;
use std::num::NonZeroU32;

const SALT: u64 = 0x6469_7370_6174;

/// Holders of cards 501–503: codice fiscale, given names, surname, birth date, e-mail, mobile.
const HOLDERS: [(&str, &str, &str, &str, &str, &str, u64); 3] = [
    (
        "DNGNCL80A01F839",
        "Nicolò",
        "D'Angelo",
        "1980-01-01",
        "nicolo.dangelo@example.it",
        "+393331112233",
        501,
    ),
    (
        "MLLZOE92M45F205",
        "Zoë",
        "Müller",
        "1992-08-05",
        "zoe.muller@example.it",
        "+393334445566",
        502,
    ),
    (
        "PRRGNS75D50L219",
        "Agnès",
        "Perrière",
        "1975-04-10",
        "agnes.perriere@example.it",
        "+393337778899",
        503,
    ),
];

/// The new mobile number the registry gives the holder of card 503.
const CHANGED_MOBILE: &str = "+393350001122";

const HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";

fn registry_row(i: usize, mobile: &str) -> String {
    let (cf15, given, surname, birth, email, _, n) = HOLDERS[i];
    format!(
        "{};{given};{surname};{birth};{email};{mobile};Via Roma {n}, 00100 Roma;false;{};2032-12-31;\n",
        cf(cf15),
        serial(n)
    )
}

/// An unsealed service over sled; one account per role.
struct Desk {
    _dir: tempfile::TempDir,
    state: AppState,
    client: Client,
}

impl std::ops::Deref for Desk {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Desk {
    fn new(sensitive_per_minute: NonZeroU32) -> Desk {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let state = cie_state(&data, sensitive_per_minute);
        let staff = open_with_accounts(
            &state,
            &["manufacturer", "cms", "operator", "support", "auditor"],
        );
        let client = Client::new(&state, staff.tokens);
        Desk {
            _dir: dir,
            state,
            client,
        }
    }

    async fn registry(&self, csv: String) {
        let a = self.post_raw("cms", "/v1/registry", "text/csv", csv).await;
        assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    }

    /// Registry, codes for cards 501–503, all three activated by their holders.
    async fn set_up(&self) {
        let csv: String = std::iter::once(HEADER.to_owned())
            .chain((0..3).map(|i| registry_row(i, HOLDERS[i].5)))
            .collect();
        self.registry(csv).await;
        let a = self
            .post_raw(
                "manufacturer",
                "/v1/batches?manufacturer=ACME",
                "text/plain",
                codes_file(501..=503, SALT),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        for n in 501..=503 {
            let a = self
                .post("operator", &card(n, "activate"), identification(n))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        }
    }

    async fn status(&self, n: u64) -> Value {
        let a = self.get("cms", &format!("/v1/cards/{}", serial(n))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.json
    }

    /// Prints card `n`'s counter page as the operator with `body`: the status, and the answer
    /// kept as JSON when it is not a PDF (the page itself is not kept for the scan).
    async fn counter_page(&self, n: u64, body: Value) -> StatusCode {
        self.counter_page_answer(n, body).await.0
    }

    async fn counter_page_answer(&self, n: u64, body: Value) -> (StatusCode, String) {
        let req = self
            .request("operator", Method::POST, &card(n, "counter-page"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let pdf = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            == Some(b"application/pdf".as_slice());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        if pdf {
            assert!(bytes.starts_with(b"%PDF-"));
            return (status, String::new());
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.bodies.lock().unwrap().push(text.clone());
        (status, text)
    }

    fn jobs(&self, n: u64) -> Vec<cards::Job> {
        self.state.cms.jobs_of(&serial(n)).unwrap()
    }

    /// No answer so far holds a code, a contact or an idempotency key.
    fn scan(&self) {
        let mut secrets: Vec<String> = Vec::new();
        for n in 501..=503 {
            let (pin, puk) = codes_of(n, SALT);
            secrets.extend([pin, puk]);
            for j in self.jobs(n) {
                secrets.push(j.idempotency_key);
            }
        }
        for (_, _, _, _, email, mobile, _) in HOLDERS {
            secrets.push(email.to_owned());
            // Without the country code too.
            secrets.push(mobile.trim_start_matches("+39").to_owned());
        }
        secrets.push(CHANGED_MOBILE.trim_start_matches("+39").to_owned());
        let bodies = self.bodies.lock().unwrap();
        assert!(bodies.len() > 10);
        for body in bodies.iter() {
            for s in &secrets {
                assert!(!body.contains(s.as_str()), "{s} in {body}");
            }
        }
    }
}

fn card(n: u64, action: &str) -> String {
    format!("/v1/cards/{}/{action}", serial(n))
}

#[tokio::test]
async fn dispatch_resend_and_reidentify_over_http() {
    let d = Desk::new(plico::DEFAULT_SENSITIVE_PER_MINUTE);
    d.set_up().await;
    let plan = json!({"plan": "counter(2)+sms"});

    // A dispatch makes part A at the counter and part B by SMS, both shown in the status.
    let a = d.post("cms", &card(501, "dispatch"), plan.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["serial"], serial(501));
    assert_eq!(a.json["plan"], "counter(2)+sms");
    let jobs = a.json["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{}", a.text);
    assert_eq!(
        (&jobs[0]["part"], &jobs[0]["channel"], &jobs[0]["state"]),
        (&json!("A"), &json!("counter"), &json!("counter"))
    );
    assert_eq!(
        (&jobs[1]["part"], &jobs[1]["channel"], &jobs[1]["state"]),
        (&json!("B"), &json!("sms"), &json!("awaiting_counter"))
    );
    for j in jobs {
        for hidden in ["idempotency_key", "peer_id", "actor", "last_error"] {
            assert!(j.get(hidden).is_none(), "{hidden} in {j}");
        }
    }
    let first_b = jobs[1]["id"].as_u64().unwrap();
    let s = d.status(501).await;
    let parts = s["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{s}");
    assert_eq!(
        (&parts[0]["part"], &parts[0]["channel"], &parts[0]["state"]),
        (&json!("A"), &json!("counter"), &json!("counter"))
    );
    assert_eq!(
        (&parts[1]["part"], &parts[1]["channel"], &parts[1]["state"]),
        (&json!("B"), &json!("sms"), &json!("awaiting_counter"))
    );
    assert_eq!(parts[1]["job"], first_b);
    assert_eq!(parts[1]["attempts"], 0);
    assert!(parts[1]["updated_ms"].as_u64().unwrap() > 0);
    assert!(s["identified_ms"].as_u64().is_some(), "{s}");

    // While it is under way, a second dispatch is refused: resend a part instead.
    let a = d
        .post("operator", &card(501, "dispatch"), plan.clone())
        .await;
    assert_refusal(&a, StatusCode::CONFLICT, "refused", "dispatch_in_force");
    // Part B waits for part A: no resend before the counter page.
    let a = d
        .post("operator", &card(501, "resend"), json!({"part": "B"}))
        .await;
    assert_refusal(&a, StatusCode::CONFLICT, "refused", "awaiting_counter");
    assert_eq!(d.counter_page(501, json!({})).await, StatusCode::OK);
    assert_eq!(d.status(501).await["parts"][1]["state"], "queued");

    // A resend of part B makes a new job for B only; A is untouched.
    let a = d
        .post("operator", &card(501, "resend"), json!({"part": "B"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["part"], "B");
    assert_eq!(a.json["channel"], "sms");
    assert_eq!(a.json["state"], "queued");
    assert_eq!(a.json["origin"], "resend");
    assert_eq!(a.json["replaces"], first_b);
    let second_b = a.json["id"].as_u64().unwrap();
    let jobs = d.jobs(501);
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs.iter().filter(|j| j.part == cards::Part::A).count(), 1);
    let old_b = jobs.iter().find(|j| j.id == first_b).unwrap();
    assert_eq!(old_b.state, cards::JobState::Superseded);
    let s = d.status(501).await;
    assert_eq!(s["parts"][0]["state"], "handed_over");
    assert_eq!(s["parts"][1]["job"], second_b);
    assert_eq!(s["parts"][1]["state"], "queued");
    // The counter part cannot be resent; a part name that does not exist is 422.
    let a = d
        .post("cms", &card(501, "resend"), json!({"part": "A"}))
        .await;
    assert_refusal(&a, StatusCode::CONFLICT, "refused", "counter_part");
    let a = d
        .post("cms", &card(501, "resend"), json!({"part": "C"}))
        .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    // Bad plans are 422 (one that does not parse, one that leaves nothing for part B of an
    // 8-digit code); an unknown field is 400; none writes anything.
    for bad in ["counter(2)+pigeon", "counter(8)+sms", ""] {
        let a = d
            .post("cms", &card(502, "dispatch"), json!({"plan": bad}))
            .await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    let a = d
        .post(
            "cms",
            &card(502, "dispatch"),
            json!({"plan": "sms", "to": "+390000000000"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(d.jobs(502).is_empty());

    // Roles: support, auditor and the manufacturer may not ask for a delivery, nor resend;
    // only the counter re-identifies.
    for who in ["support", "auditor", "manufacturer"] {
        let a = d.post(who, &card(502, "dispatch"), plan.clone()).await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
        let a = d
            .post(who, &card(501, "resend"), json!({"part": "B"}))
            .await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    let a = d
        .post("cms", &card(503, "reidentify"), identification(503))
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    assert!(d.jobs(502).is_empty());

    // A suspended card: 409 wrong_state naming its state, no job, status unchanged.
    let a = d
        .post("support", &card(502, "suspend"), json!({"reason": "lost"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let before = d.status(502).await;
    let a = d.post("cms", &card(502, "dispatch"), plan.clone()).await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    assert_eq!(a.json["error"]["state"], "suspended", "{}", a.text);
    assert!(d.jobs(502).is_empty());
    assert_eq!(d.status(502).await, before);
    assert_eq!(before["parts"], json!([]));

    // The registry changes the holder's mobile number: no SMS to it until the holder is
    // identified again at the counter (rule 13); the refusal says what changed.
    let before = d.status(503).await;
    d.registry(format!("{HEADER}{}", registry_row(2, CHANGED_MOBILE)))
        .await;
    let a = d.post("cms", &card(503, "dispatch"), plan.clone()).await;
    assert_refusal(&a, StatusCode::CONFLICT, "refused", "contact_changed");
    assert!(d.jobs(503).is_empty());
    // Identification times are in ms: make sure the new one is later than the change.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let a = d
        .post("operator", &card(503, "reidentify"), identification(503))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "active");
    assert!(
        a.json["identified_ms"].as_u64() > before["identified_ms"].as_u64(),
        "{}",
        a.text
    );
    // A re-identification is checked like an activation.
    let a = d
        .post(
            "operator",
            &card(503, "reidentify"),
            json!({"by": "holder", "document_type": "", "document_number": "X",
                   "consent_ref": "c"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    // Only an active card can be re-identified.
    let a = d
        .post("operator", &card(502, "reidentify"), identification(502))
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    let a = d.post("cms", &card(503, "dispatch"), plan.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["jobs"][1]["channel"], "sms");
    assert_eq!(d.counter_page(503, json!({})).await, StatusCode::OK);

    // Start-up recovery: a job a dead worker left `sending` is queued again, once.
    let claimed = d
        .state
        .cms
        .claim_due(u64::MAX / 2, &cards::Channel::REMOTE, 10)
        .unwrap();
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    assert_eq!(d.status(503).await["parts"][1]["state"], "sending");
    let requeued = plico::recover_outbox(d.state.clone(), Duration::from_millis(5)).await;
    assert_eq!(requeued, 2);
    let s = d.status(503).await;
    assert_eq!(s["parts"][1]["state"], "queued");
    assert_eq!(s["parts"][1]["attempts"], 1);
    assert_eq!(
        plico::recover_outbox(d.state.clone(), Duration::from_millis(5)).await,
        0
    );

    d.scan();
}

#[tokio::test]
async fn resends_are_rate_limited_per_account() {
    let d = Desk::new(NonZeroU32::new(4).unwrap());
    d.set_up().await;
    let a = d
        .post(
            "cms",
            &card(501, "dispatch"),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["jobs"][1]["channel"], "email");
    // The counter page (part A, handed over) is the operator's first sensitive call.
    assert_eq!(d.counter_page(501, json!({})).await, StatusCode::OK);
    for _ in 0..3 {
        let a = d
            .post("operator", &card(501, "resend"), json!({"part": "b"}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    // The fifth sensitive call of the operator this minute.
    let a = d
        .post("operator", &card(501, "resend"), json!({"part": "B"}))
        .await;
    assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(d.jobs(501).len(), 5, "a refused resend writes no job");
    // Dispatches count against the same limit.
    let a = d
        .post("operator", &card(502, "dispatch"), json!({"plan": "sms"}))
        .await;
    assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(d.jobs(502).is_empty());
    // Another account has its own budget.
    let a = d
        .post("cms", &card(501, "resend"), json!({"part": "B"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    d.scan();
}

#[tokio::test]
async fn the_counter_page_is_part_a_of_the_dispatch_and_a_new_dispatch_replaces_it() {
    // Issue 14, items 1 and 3, over HTTP.
    let d = Desk::new(plico::DEFAULT_SENSITIVE_PER_MINUTE);
    d.set_up().await;
    // No dispatch: no counter page.
    let (status, text) = d.counter_page_answer(501, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(
        reason_of(&text).as_deref(),
        Some("no_split_dispatch"),
        "{text}"
    );
    let a = d
        .post(
            "cms",
            &card(501, "dispatch"),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let first = a.json["id"].as_u64().unwrap();
    assert_eq!(a.json["jobs"][1]["state"], "awaiting_counter");
    // Another plan: 409 naming the plan in force, nothing recorded.
    let (status, text) = d
        .counter_page_answer(501, json!({"plan": "counter(3)+sms"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(reason_of(&text).as_deref(), Some("plan_in_force"), "{text}");
    assert_eq!(d.status(501).await["parts"][0]["state"], "counter");
    // The dispatch's plan: printed, handed over, part B released to its courier.
    assert_eq!(d.counter_page(501, json!({})).await, StatusCode::OK);
    let s = d.status(501).await;
    assert_eq!(s["parts"][0]["state"], "handed_over", "{s}");
    assert_eq!(s["parts"][1]["state"], "queued", "{s}");
    let a_job = &s["dispatches"][0]["jobs"][0];
    assert_eq!(a_job["prints"], 1, "{s}");
    assert!(a_job["handed_over_ms"].as_u64().is_some(), "{s}");
    assert!(a_job["handed_over_by"].as_str().is_some(), "{s}");
    // Again: only as a reprint.
    let (status, text) = d.counter_page_answer(501, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(reason_of(&text).as_deref(), Some("handed_over"), "{text}");
    assert_eq!(
        d.counter_page(501, json!({"reprint": true})).await,
        StatusCode::OK
    );
    let s = d.status(501).await;
    assert_eq!(s["dispatches"][0]["jobs"][0]["prints"], 2, "{s}");
    let count = |action: &str| {
        d.state
            .audit
            .query(&vault::Query {
                action: Some(action.into()),
                limit: 100,
                ..vault::Query::default()
            })
            .unwrap()
            .events
            .len()
    };
    assert_eq!(
        (count("dispatch.handover"), count("dispatch.reprint")),
        (1, 1)
    );
    // A second dispatch: refused unless it replaces the first, with a reason.
    let a = d
        .post("cms", &card(501, "dispatch"), json!({"plan": "sms"}))
        .await;
    assert_refusal(&a, StatusCode::CONFLICT, "refused", "dispatch_in_force");
    for bad in [
        json!({"plan": "sms", "replace": true}),
        json!({"plan": "sms", "reason": "why"}),
        json!({"plan": "sms", "replace": true, "reason": " "}),
    ] {
        let a = d.post("cms", &card(501, "dispatch"), bad).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    assert_eq!(d.jobs(501).len(), 2);
    let a = d
        .post(
            "cms",
            &card(501, "dispatch"),
            json!({"plan": "sms", "replace": true, "reason": "holder asked for SMS"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["replaces"], first);
    let second = a.json["id"].as_u64().unwrap();
    // The card lists both dispatches with their parts; the old part B, never sent, cancelled.
    let s = d.status(501).await;
    let ds = s["dispatches"].as_array().unwrap();
    assert_eq!(ds.len(), 2, "{s}");
    assert_eq!(ds[0]["superseded_by"], second);
    assert_eq!(ds[0]["jobs"][1]["state"], "cancelled", "{s}");
    assert_eq!(ds[0]["jobs"][1]["cancel_reason"], "superseded", "{s}");
    assert_eq!(ds[1]["jobs"][0]["part"], "whole");
    assert_eq!(s["parts"].as_array().unwrap().len(), 1, "{s}");
    // The new dispatch has no counter part: no counter page.
    let (status, text) = d.counter_page_answer(501, json!({"reprint": true})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    d.scan();
}
