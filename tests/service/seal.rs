//! The emergency seal over HTTP (`POST /v1/sys/seal`): who may call it, what it drops, that
//! an import running at that moment commits whole or not at all, and that only the quorum
//! unseals again.

use super::support::{open_with_accounts, Client};
use super::*;
use plico::Settings;
use vault::CodePolicy;
use vault::SledStore;

fn card_lines(first: u64, count: u64) -> String {
    super::support::codes_file(first..=first + count - 1, 0x5ea1)
}

async fn unseal_with(client: &Client, share: &SecretString) -> Answer {
    let req = Request::post("/v1/sys/unseal")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"share": share.expose_secret()}).to_string(),
        ))
        .unwrap();
    send(&client.app, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_seal_drops_the_keys_and_an_import_under_way_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    hsm.unseal(&shares[0]).unwrap();
    hsm.unseal(&shares[1]).unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let settings = Settings {
        codes: CodePolicy::CIE,
        ..Settings::default()
    };
    let state = AppState::with_settings(hsm.clone(), store, &settings).unwrap();
    let staff = open_with_accounts(&state, &["officer", "acme", "operator", "auditor"]);
    let client = Arc::new(Client::new(&state, staff.tokens));

    let small = client
        .post_raw(
            "acme",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            card_lines(1, 100),
        )
        .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text);

    // Not for the other roles.
    for who in ["operator", "acme", "auditor"] {
        let a = client.post(who, "/v1/sys/seal", json!({})).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{who}: {}", a.text);
    }
    assert!(!hsm.status().sealed);

    // A large import and the seal at the same time.
    const BIG: u64 = 150_000;
    let upload = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post_raw(
                    "acme",
                    "/v1/batches?manufacturer=ACME",
                    "text/plain",
                    card_lines(1_000, BIG),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sealed = client.post("officer", "/v1/sys/seal", json!({})).await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);
    assert_eq!(sealed.json["sealed"], true);
    assert!(hsm.status().sealed);
    let ready = send(
        &client.app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let big = upload.await.unwrap();
    // Sealed: a new import is refused, the seal again is harmless.
    let refused = client
        .post_raw(
            "acme",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            card_lines(500_000, 10),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text
    );
    let again = client.post("admin", "/v1/sys/seal", json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["was_sealed"], true);

    // Only a quorum unseals: one share leaves it sealed.
    let one = unseal_with(&client, &shares[2]).await;
    assert_eq!(one.json["sealed"], true, "{}", one.text);
    assert!(hsm.status().sealed);
    let two = unseal_with(&client, &shares[0]).await;
    assert_eq!(two.json["sealed"], false, "{}", two.text);
    let ready = send(
        &client.app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);

    // The import that raced the seal is whole or absent: never a part of it.
    let list = client.get("acme", "/v1/batches").await;
    let batches = list.json["batches"].as_array().unwrap().clone();
    let committed: Vec<&Value> = batches
        .iter()
        .filter(|b| b["state"] == "committed")
        .collect();
    if big.status == StatusCode::CREATED {
        assert_eq!(big.json["cards"], BIG, "{}", big.text);
        assert_eq!(committed.len(), 2, "{}", list.text);
    } else {
        assert_eq!(big.status, StatusCode::SERVICE_UNAVAILABLE, "{}", big.text);
        assert_eq!(committed.len(), 1, "{}", list.text);
        let retry = client
            .post_raw(
                "acme",
                "/v1/batches?manufacturer=ACME",
                "text/plain",
                card_lines(1_000, BIG),
            )
            .await;
        assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
        assert_eq!(retry.json["cards"], BIG);
    }
    let total: u64 = client.get("acme", "/v1/batches").await.json["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "committed")
        .map(|b| b["cards"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100 + BIG);

    // Each seal is audited, by its caller.
    let events = state
        .audit
        .query(&vault::Query {
            action: Some("hsm.seal".into()),
            limit: 10,
            ..vault::Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].details["was_sealed"], "false");
    assert_eq!(events[1].details["was_sealed"], "true");
}
