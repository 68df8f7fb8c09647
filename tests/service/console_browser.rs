//! The console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/test.sh`) against `plico::serve` on
//! a real socket, with the delivery workers sending SMS through Kannel and its fake SMSC.
//!
//! An operator logs in with the initial password an administrator set and must change it;
//! searches a holder by codice fiscale (an address that is markup shows as text); downloads
//! the consent form for the citizen to sign and activates the card by a delegate; chooses
//! `counter(2)+sms`; downloads part A, whose text (`pdftotext`) holds the first two digits of
//! the PIN and the PUK and nothing more, while part B reaches the fake SMSC with the other
//! digits only; suspends the card, and a second suspension shows
//! the conflict with the current state; a form without its CSRF token is refused; an idle
//! session goes back to the login page. Screenshots of the main pages are saved under
//! `target/console-screenshots/` (not committed).

use super::batches::{codes_of, serial};
use super::console::{counter_state, own_password, registry, HOSTILE, INITIAL, PASSWORD};
use super::peers::Kannel;
use super::support::cf;
use super::webdriver::Driver;
use super::*;
use cards::{Channel, Fallback, JobState, OutboxPolicy, Part};
use dispatch::courier::sms::KannelCourier;
use dispatch::courier::Courier;
use plico::console::ConsoleSettings;
use plico::delivery::Delivery;

const SALT: u64 = 0x636f_6e73;

/// Delivery workers sending SMS through `kannel`.
fn sms_delivery(state: &AppState, kannel: &Kannel) -> Delivery {
    let policy = OutboxPolicy {
        max_attempts: 3,
        backoff_base_ms: 200,
        backoff_max_ms: 1000,
        jitter: false,
        fallback: Fallback {
            sms_to_email: false,
            counter_reprint: true,
        },
    };
    let mut delivery = Delivery::new(&state.print.clone(), policy);
    delivery.poll = Duration::from_millis(50);
    let courier = KannelCourier::new(kannel.config("s3cret")).unwrap();
    delivery.with_courier(Channel::Sms, Arc::new(courier) as Arc<dyn Courier>, 4)
}

/// axe-core's script: npm's `axe-core` in `target/axe` (installed there by `scripts/test.sh`,
/// or here when missing).
fn axe_source() -> String {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/axe");
    let js = prefix.join("node_modules/axe-core/axe.min.js");
    if !js.exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(AXE_CORE)
            .status()
            .unwrap();
        assert!(status.success(), "npm install {AXE_CORE}");
    }
    std::fs::read_to_string(js).unwrap()
}

/// The axe-core release the accessibility checks use.
const AXE_CORE: &str = "axe-core@4.14.1";

/// Runs axe-core on the page and fails on any serious or critical violation.
async fn accessible(web: &Driver, axe: &str, page: &str) {
    web.execute(axe).await;
    let found = web
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run().then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))));",
        )
        .await;
    let found = found.as_array().unwrap();
    assert!(found.is_empty(), "axe-core on the {page} page: {found:#?}");
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until a file ending in `.pdf` is complete in `dir`.
async fn downloaded_pdf(dir: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = std::fs::read_dir(dir).unwrap().find_map(|e| {
            let p = e.unwrap().path();
            (p.extension().is_some_and(|x| x == "pdf")).then_some(p)
        });
        if let Some(p) = done {
            return std::fs::read(p).unwrap();
        }
        assert!(Instant::now() < deadline, "no PDF downloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pdftotext(pdf: &[u8], dir: &Path) -> String {
    let path = dir.join("part-a.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success(), "pdftotext: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_activates_by_delegate_and_hands_over_part_a_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let kannel_dir = dir.path().join("kannel");
    std::fs::create_dir(&kannel_dir).unwrap();
    let kannel = Kannel::start(&kannel_dir).await;
    let idle = Duration::from_secs(6);
    let settings = ConsoleSettings {
        idle,
        ..ConsoleSettings::default()
    };
    let (state, staff, client) = counter_state(dir.path(), settings);
    own_password(&state, &staff, "admin");
    registry(&client).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let delivery = sms_delivery(&state, &kannel);
    let state = state.with_delivery(delivery);
    let served = super::support::Served::start(listener, &state);
    let base = format!("http://127.0.0.1:{port}");
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let shots = screenshots();
    let web = Driver::start(&downloads, &dir.path().join("chromedriver.log")).await;

    // Login with the initial password, then the forced change.
    web.goto(&format!("{base}/")).await;
    assert!(web.url().await.ends_with("/login"));
    web.screenshot(&shots.join("login.png")).await;
    let axe = axe_source();
    accessible(&web, &axe, "login").await;
    web.fill("#login", "operator").await;
    web.fill("#password", INITIAL).await;
    web.submit("#do-login").await;
    assert!(
        web.url().await.ends_with("/password"),
        "{}",
        web.url().await
    );
    web.fill("#current", INITIAL).await;
    web.fill("#new", PASSWORD).await;
    web.fill("#repeat", PASSWORD).await;
    web.submit("#do-change").await;
    assert_eq!(web.text("#message-title").await, "Password cambiata.");

    // Search by codice fiscale: the markup in the address is text, and ran nothing.
    web.goto(&format!("{base}/")).await;
    assert!(web.text("#who").await.contains("operatore di sportello"));
    accessible(&web, &axe, "home").await;
    web.fill("#codice_fiscale", &cf("DNGNCL80A01F839")).await;
    web.submit("#do-search").await;
    assert_eq!(web.text(".address").await, HOSTILE);
    assert_eq!(web.count("main script").await, 0);
    web.screenshot(&shots.join("holders.png")).await;
    accessible(&web, &axe, "holders").await;
    web.submit("a.card-link").await;
    assert_eq!(web.text("#card-state").await, "emessa");

    // Activation by a delegate.
    web.click("#by-delegate").await;
    web.click("#document_type option[value='passaporto']").await;
    web.fill("#document_number", "YA1234567").await;
    web.fill("#consent_ref", "consenso-701").await;
    web.fill("#d_given_names", "Anna").await;
    web.fill("#d_surname", "Bianchi").await;
    web.fill("#d_codice_fiscale", &cf("BNCNNA70A41F839")).await;
    web.fill("#delegation_ref", "delega-77").await;
    web.screenshot(&shots.join("activate.png")).await;
    accessible(&web, &axe, "card (issued)").await;
    // The consent form for the citizen to sign: a PDF with the names, never a code.
    web.click("#do-consent").await;
    let form = downloaded_pdf(&downloads).await;
    let text = pdftotext(&form, dir.path());
    assert!(
        text.contains("Nicolò D'Angelo") && text.contains("Anna Bianchi"),
        "{text}"
    );
    for entry in std::fs::read_dir(&downloads).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    web.submit("#do-activate").await;
    assert_eq!(web.text("#card-state").await, "attiva");

    // counter(2)+sms, then part A as a PDF.
    web.click("#plan-select option[value='counter(2)+sms']")
        .await;
    web.submit("#do-dispatch").await;
    assert_eq!(web.text("#plan").await, "counter(2)+sms");
    let (pin, puk) = codes_of(701, SALT);
    let html = web.source().await;
    assert!(!html.contains(&pin[..4]) && !html.contains(&puk[..4]));
    web.click("#do-part-a").await;
    let pdf = downloaded_pdf(&downloads).await;
    let text = pdftotext(&pdf, dir.path());
    assert!(
        text.contains(&pin[..2]) && text.contains(&puk[..2]),
        "{text}"
    );
    for code in [&pin, &puk] {
        assert!(!text.contains(&code[2..]), "more than part A on the page");
    }
    web.goto(&format!("{base}/cards/{}", serial(701))).await;
    web.screenshot(&shots.join("card.png")).await;
    accessible(&web, &axe, "card (active)").await;

    // A form without its CSRF token is refused and changes nothing.
    web.execute("document.querySelector('form[action$=\"/change\"] input[name=csrf]').remove()")
        .await;
    web.submit("#do-change").await;
    assert_eq!(
        web.text("#message-title").await,
        "Richiesta rifiutata: modulo non valido o scaduto"
    );
    web.goto(&format!("{base}/cards/{}", serial(701))).await;
    assert_eq!(web.text("#card-state").await, "attiva");

    // Suspend (with its confirmation), then again: the conflict names the current state.
    for _ in 0..2 {
        web.goto(&format!("{base}/cards/{}", serial(701))).await;
        web.click("#action option[value='suspend']").await;
        web.click("#reason option[value='lost']").await;
        web.submit("#do-change").await;
        assert!(web.text("#confirm-text").await.contains(&serial(701)));
        accessible(&web, &axe, "confirmation").await;
        web.submit("#do-confirm").await;
    }
    assert_eq!(web.text("#current-state").await, "Stato attuale: sospesa");
    web.screenshot(&shots.join("conflict.png")).await;
    accessible(&web, &axe, "conflict").await;

    // A problem report from the counter, worked by the service centre.
    web.goto(&format!("{base}/cards/{}", serial(701))).await;
    web.fill("#report_title", "carta smarrita").await;
    web.fill("#report_text", "il titolare chiede una nuova carta")
        .await;
    web.submit("#do-report").await;
    web.submit("#logout").await;
    web.fill("#login", "support").await;
    web.fill("#password", PASSWORD).await;
    web.submit("#do-login").await;
    web.submit("#go-reports").await;
    accessible(&web, &axe, "reports").await;
    web.submit("#report-1 .do-assign").await;
    assert!(web
        .text("#report-1 .report-state")
        .await
        .contains("assegnata"));
    web.fill("#close-1", "nuova carta richiesta").await;
    web.screenshot(&shots.join("reports.png")).await;
    web.submit("#report-1 .do-close").await;
    assert_eq!(web.count("#report-1").await, 0);
    web.submit("#logout").await;

    // The administrator makes an operator, whose first login asks for a new password.
    web.fill("#login", "Amministratrice").await;
    web.fill("#password", PASSWORD).await;
    web.submit("#do-login").await;
    web.submit("#go-accounts").await;
    accessible(&web, &axe, "accounts").await;
    web.fill("#name", "sportello2").await;
    web.click("#role option[value='operator']").await;
    web.submit("#do-create").await;
    let initial = web.text("#secret").await;
    accessible(&web, &axe, "initial password").await;
    web.submit("#logout").await;
    web.fill("#login", "sportello2").await;
    web.fill("#password", &initial).await;
    web.submit("#do-login").await;
    assert_eq!(web.count("#must-change").await, 1);
    web.fill("#current", &initial).await;
    web.fill("#new", PASSWORD).await;
    web.fill("#repeat", PASSWORD).await;
    web.submit("#do-change").await;
    web.goto(&format!("{base}/")).await;
    assert!(web.text("#who").await.contains("sportello2"));

    // The operator enrols a second factor: the app's code from the secret shown, then logs
    // in with the password and a code.
    web.goto(&format!("{base}/totp")).await;
    web.submit("#do-new-totp").await;
    let secret = web.text("#totp-secret").await;
    let uri = web.text("#totp-uri").await;
    assert!(uri.starts_with("otpauth://totp/plico:sportello2?secret="));
    web.screenshot(&shots.join("totp.png")).await;
    // The QR code on the page reads back as the same URI (zbarimg, package zbar-tools).
    let read = Command::new("zbarimg")
        .args(["-q", "--raw"])
        .arg(shots.join("totp.png"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), uri);
    accessible(&web, &axe, "second factor").await;
    let app_code = |ahead: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        vault::totp_code_from_base32(&secret, now + ahead).unwrap()
    };
    web.fill("#code", &app_code(0)).await;
    web.submit("#do-confirm").await;
    assert_eq!(
        web.text("#message-title").await,
        "Secondo fattore attivato."
    );
    web.submit("#logout").await;
    web.fill("#login", "sportello2").await;
    web.fill("#password", PASSWORD).await;
    web.submit("#do-login").await;
    assert!(
        web.url().await.ends_with("/login/code"),
        "{}",
        web.url().await
    );
    accessible(&web, &axe, "login code").await;
    // The enrolment's code is spent: the next step's code (one step ahead) is accepted.
    web.fill("#code", &app_code(30)).await;
    web.submit("#do-code").await;
    assert!(web.text("#who").await.contains("sportello2"));

    // Idle too long: back to the login page.
    tokio::time::sleep(idle + Duration::from_millis(500)).await;
    web.goto(&format!("{base}/cards/{}", serial(701))).await;
    assert!(web.url().await.contains("/login"), "{}", web.url().await);
    assert!(web.count("#expired").await == 1);

    // Five wrong passwords lock the account: then its right password is refused too, with
    // the same message (which says nothing of which it was).
    for attempt in 0..6 {
        web.goto(&format!("{base}/login")).await;
        web.fill("#login", "support").await;
        let password = if attempt < 5 {
            "non è la password"
        } else {
            PASSWORD
        };
        web.fill("#password", password).await;
        web.submit("#do-login").await;
        assert!(web.url().await.ends_with("/login"), "{}", web.url().await);
        assert_eq!(
            web.text("#error").await,
            "Nome utente o password errati, oppure utenza bloccata."
        );
    }
    assert!(state.console.guard.locked(&staff.ids["support"]));

    // Part B went through Kannel before the suspension, with the other digits only.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = state.cms.jobs_of(&serial(701)).unwrap();
        let b = jobs.iter().rev().find(|j| j.part == Part::B).unwrap();
        if matches!(b.state, JobState::Sent | JobState::Delivered) {
            break;
        }
        assert!(Instant::now() < deadline, "part B: {}", b.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = kannel.fakesmsc_log();
    assert!(log.contains(&pin[2..]), "part B not at the fake SMSC");
    assert!(!log.contains(&pin), "a whole PIN in an SMS");
    drop(web);
    served.stop().await;
}
