//! The console's message catalogue: every text a page shows, in Italian (the default) and
//! English, by key. Templates read it as `m.key` (or `m["state_" ~ value]` for a value's
//! label); a key missing from the catalogue shows as nothing, and the catalogue test checks
//! that every key a template names is here in both languages.

use minijinja::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Italiano (the default).
    It,
    /// English.
    En,
}

impl Lang {
    /// `en` is English; anything else Italian.
    pub fn parse(text: &str) -> Lang {
        if text == "en" {
            Lang::En
        } else {
            Lang::It
        }
    }

    /// `it` or `en`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }
}

/// `(key, italiano, English)`.
pub const MESSAGES: &[(&str, &str, &str)] = &[
    ("app", "plico · sportello", "plico · counter"),
    ("nav_lang", "Lingua", "Language"),
    ("nav_home", "Inizio", "Home"),
    ("nav_password", "Cambia password", "Change password"),
    ("logged_in_as", "Collegato come", "Logged in as"),
    ("logout", "Esci", "Log out"),
    ("role_operator", "operatore di sportello", "counter operator"),
    ("role_support", "centro servizi", "service centre"),
    ("role_admin", "amministratore", "administrator"),
    ("role_auditor", "revisore", "auditor"),
    ("role_officer", "responsabile delle chiavi", "key officer"),
    ("role_cms", "CMS", "CMS"),
    ("role_manufacturer", "produttore", "manufacturer"),
    ("login_title", "Accesso", "Log in"),
    ("login_expired", "La sessione è scaduta: accedi di nuovo.", "Your session has ended: please log in again."),
    ("login_name", "Nome utente", "Account name"),
    ("password", "Password", "Password"),
    ("login_button", "Accedi", "Log in"),
    ("err_login", "Nome utente o password errati, oppure utenza bloccata.", "Wrong account name or password, or the account is locked."),
    ("err_login_rate", "Troppi tentativi da questo indirizzo: riprova tra un minuto.", "Too many attempts from this address: try again in a minute."),
    ("password_title", "Cambio password", "Change password"),
    ("password_required", "La password è stata impostata da un amministratore: scegline una nuova prima di continuare.", "Your password was set by an administrator: choose a new one before going on."),
    ("password_current", "Password attuale", "Current password"),
    ("password_new", "Nuova password", "New password"),
    ("password_repeat", "Ripeti la nuova password", "New password again"),
    ("password_button", "Cambia password", "Change password"),
    ("err_password_mismatch", "Le due nuove password non coincidono", "The two new passwords differ"),
    ("err_password_current", "La password attuale non è corretta", "The current password is wrong"),
    ("err_password_invalid", "La nuova password non è accettabile", "The new password is not acceptable"),
    ("done_password", "Password cambiata.", "Password changed."),
    ("home_title", "Inizio", "Home"),

    ("search_title", "Cerca un titolare", "Find a holder"),
    ("search_or", "oppure", "or"),
    ("search_button", "Cerca", "Search"),
    ("codice_fiscale", "Codice fiscale", "Codice fiscale"),
    ("surname", "Cognome", "Surname"),
    ("given_names", "Nome", "Given names"),
    ("birth_date", "Data di nascita", "Birth date"),
    ("card_lookup", "Apri una carta", "Open a card"),
    ("card_open", "Apri", "Open"),
    ("serial", "Numero della carta", "Card serial"),
    ("holders_title", "Titolari trovati", "Holders found"),
    ("holders_none", "Nessun titolare trovato.", "No holder found."),
    ("holder_id", "Titolare", "Holder"),
    ("deceased", "Deceduto", "Deceased"),
    ("mobile", "Cellulare", "Mobile"),
    ("email", "E-mail", "E-mail"),
    ("address", "Indirizzo", "Address"),
    ("cards", "Carte", "Cards"),
    ("state", "Stato", "State"),
    ("state_issued", "emessa", "issued"),
    ("state_active", "attiva", "active"),
    ("state_suspended", "sospesa", "suspended"),
    ("state_revoked", "revocata", "revoked"),
    ("yes", "sì", "yes"),
    ("no", "no", "no"),
    ("back", "Indietro", "Back"),
    ("cancel", "Annulla", "Cancel"),
    ("card_title", "Carta", "Card"),
    ("expiry", "Scadenza", "Expiry"),
    ("reason", "Motivo", "Reason"),
    ("reason_lost", "smarrimento", "lost"),
    ("reason_stolen", "furto", "stolen"),
    ("reason_damaged", "danneggiamento", "damaged"),
    ("reason_malfunction", "malfunzionamento", "malfunction"),
    ("reason_code_compromised", "codici compromessi", "codes compromised"),
    ("reason_puk_blocked", "PUK bloccato", "PUK blocked"),
    ("reason_data_error", "dati errati", "data error"),
    ("reason_deceased", "decesso", "deceased"),
    ("reason_replaced", "sostituzione", "replaced"),
    ("reason_expired", "scadenza", "expired"),
    ("reason_other", "altro", "other"),
    ("activated_by", "Attivata da", "Activated by"),
    ("by_holder", "il titolare di persona", "the holder in person"),
    ("by_delegate", "un delegato", "a delegate"),
    ("codes_held", "Codici custoditi", "Codes held"),
    ("plan_in_force", "Consegna in corso", "Delivery in force"),
    ("parts", "Parti dei codici", "Parts of the codes"),
    ("part", "Parte", "Part"),
    ("channel", "Canale", "Channel"),
    ("attempts", "Tentativi", "Attempts"),
    ("failure_reason", "Ultimo errore", "Last failure"),
    ("channel_counter", "sportello", "counter"),
    ("channel_sms", "SMS", "SMS"),
    ("channel_email", "e-mail", "e-mail"),
    ("channel_mailer", "busta cieca", "blind mailer"),
    ("job_counter", "allo sportello", "at the counter"),
    ("job_queued", "in coda", "queued"),
    ("job_sending", "in invio", "sending"),
    ("job_sent", "inviata", "sent"),
    ("job_delivered", "consegnata", "delivered"),
    ("job_failed", "non riuscita, si riprova", "failed, retrying"),
    ("job_dead", "non consegnabile", "undeliverable"),
    ("job_superseded", "sostituita", "superseded"),
    ("job_awaiting_counter", "attende la parte A allo sportello", "waiting for part A at the counter"),
    ("job_handed_over", "consegnata allo sportello", "handed over at the counter"),
    ("job_cancelled", "annullata", "cancelled"),
    ("needs_reprint", "da ristampare allo sportello", "to be reprinted at the counter"),
    ("history_title", "Storico della carta", "Card history"),
    ("when", "Quando", "When"),
    ("action", "Operazione", "Action"),
    ("by", "Da", "By"),
    ("outcome", "Esito", "Outcome"),
    ("details", "Dettagli", "Details"),
    ("activate_title", "Identifica e attiva", "Identify and activate"),
    ("activate_who", "Chi si presenta", "Who is at the counter"),
    ("document_type", "Documento di identità", "Identity document"),
    ("doc_carta_identita", "carta d'identità", "identity card"),
    ("doc_passaporto", "passaporto", "passport"),
    ("doc_patente", "patente", "driving licence"),
    ("document_number", "Numero del documento", "Document number"),
    ("consent_ref", "Riferimento del consenso firmato", "Signed consent reference"),
    ("delegate_title", "Delegato (solo se si presenta un delegato)", "Delegate (only when a delegate comes)"),
    ("delegation_ref", "Riferimento della delega", "Delegation reference"),
    ("activate_button", "Attiva la carta", "Activate the card"),
    ("dispatch_title", "Consegna dei codici", "Delivery of the codes"),
    ("plan", "Modalità di consegna", "Delivery plan"),
    ("dispatch_replace", "Sostituisce la consegna in corso", "Replaces the delivery in force"),
    ("dispatch_replace_reason", "Motivo della sostituzione", "Why it is replaced"),
    ("dispatch_button", "Avvia la consegna", "Start the delivery"),
    ("part_a_reprint", "Ristampa (la parte A era già stata consegnata)", "Reprint (part A was already handed over)"),
    ("part_a_button", "Scarica la parte A (PDF)", "Download part A (PDF)"),
    ("resend_button", "Invia di nuovo questa parte", "Resend this part"),
    ("change_title", "Sospendi, riattiva o revoca", "Suspend, reactivate or revoke"),
    ("action_suspend", "sospendi", "suspend"),
    ("action_reactivate", "riattiva", "reactivate"),
    ("action_revoke", "revoca", "revoke"),
    ("change_button", "Prosegui", "Continue"),
    ("confirm_title", "Conferma", "Confirm"),
    ("confirm_suspend", "Sospendere la carta", "Suspend the card"),
    ("confirm_reactivate", "Riattivare la carta", "Reactivate the card"),
    ("confirm_revoke", "Revocare definitivamente la carta", "Revoke the card for good"),
    ("confirm_button", "Confermo", "Confirm"),
    ("current_state", "Stato attuale", "Current state"),
    ("report_title", "Segnala un problema", "Report a problem"),
    ("report_subject", "Oggetto", "Subject"),
    ("report_text", "Descrizione", "Description"),
    ("report_button", "Invia la segnalazione", "Send the report"),
    ("done_activated", "Carta attivata.", "Card activated."),
    ("done_dispatched", "Consegna avviata.", "Delivery started."),
    ("done_changed", "Stato della carta cambiato.", "Card state changed."),
    ("done_resent", "Parte inviata di nuovo.", "Part sent again."),
    ("done_reported", "Segnalazione aperta.", "Report opened."),
    ("reports_title", "Segnalazioni", "Problem reports"),
    ("reports_open_only", "Solo aperte e assegnate", "Open and assigned only"),
    ("reports_all", "Anche le chiuse", "Closed ones too"),
    ("reports_none", "Nessuna segnalazione.", "No report."),
    ("report_open", "aperta", "open"),
    ("report_assigned", "assegnata", "assigned"),
    ("report_closed", "chiusa", "closed"),
    ("opened_by", "Aperta da", "Opened by"),
    ("assignee", "Assegnata a", "Assigned to"),
    ("assignee_id", "Assegna a (id; vuoto: a me)", "Assign to (id; empty: me)"),
    ("assign_button", "Assegna", "Assign"),
    ("comment", "Commento", "Comment"),
    ("comment_button", "Commenta", "Comment"),
    ("closing_note", "Nota di chiusura", "Closing note"),
    ("close_button", "Chiudi", "Close"),
    ("done_assigned", "Segnalazione assegnata.", "Report assigned."),
    ("done_commented", "Commento aggiunto.", "Comment added."),
    ("done_closed", "Segnalazione chiusa.", "Report closed."),
    ("overdue_title", "Consegne in ritardo", "Overdue deliveries"),
    ("overdue_after", "Parti non consegnate dopo", "Parts not delivered after"),
    ("overdue_none", "Nessuna consegna in ritardo.", "No overdue delivery."),
    ("since", "Dal", "Since"),
    ("accounts_title", "Utenze", "Accounts"),
    ("account_new", "Nuova utenza", "New account"),
    ("account_name", "Nome", "Name"),
    ("account_role", "Ruolo", "Role"),
    ("account_create", "Crea", "Create"),
    ("actions", "Azioni", "Actions"),
    ("account_enabled", "attiva", "enabled"),
    ("account_disabled", "disattivata", "disabled"),
    ("account_must_change", "deve cambiare la password", "must change the password"),
    ("account_disable", "Disattiva", "Disable"),
    ("account_rotate", "Nuovo token", "New token"),
    ("account_reset", "Reimposta password", "Reset password"),
    ("secret_title", "Da comunicare una sola volta", "Shown only once"),
    ("secret_password", "Password iniziale dell'utenza", "Initial password of the account"),
    ("secret_token", "Token dell'utenza", "Token of the account"),
    ("secret_once", "Non sarà più mostrato: consegnalo ora alla persona, che dovrà cambiare la password al primo accesso.", "It will not be shown again: hand it over now; a password must be changed at the first login."),
    ("audit_title", "Registro di audit", "Audit chain"),
    ("subject", "Oggetto", "Subject"),
    ("from_day", "Dal giorno", "From day"),
    ("to_day", "Al giorno", "To day"),
    ("audit_verify", "Verifica la catena", "Verify the chain"),
    ("audit_export", "Esporta (NDJSON)", "Export (NDJSON)"),
    ("verify_ok", "Catena integra", "The chain is intact"),
    ("verify_broken", "Catena interrotta all'evento", "The chain is broken at event"),
    ("keys_title", "Stato delle chiavi", "Key status"),
    ("keys_cli", "Sola lettura: le cerimonie si fanno con la riga di comando (plico keys).", "Read only: ceremonies are done on the command line (plico keys)."),
    ("home_reports", "Segnalazioni", "Problem reports"),
    ("home_accounts", "Utenze", "Accounts"),
    ("home_audit", "Registro di audit", "Audit chain"),
    ("home_keys", "Stato delle chiavi", "Key status"),
    ("err_generic", "Operazione non riuscita", "The operation failed"),
    ("err_bad_request", "Dati non validi", "Invalid data"),
    ("err_invalid", "Dati non accettabili", "Data not acceptable"),
    ("err_not_found", "Non trovato", "Not found"),
    ("err_wrong_state", "Operazione non possibile nello stato attuale della carta", "Not possible in the card's current state"),
    ("err_refused", "Operazione rifiutata", "Refused"),
    ("err_rate_limited", "Troppe richieste: riprova tra poco", "Too many requests: try again shortly"),
    ("err_sealed", "Il servizio è sigillato: attendere lo sblocco dei custodi", "The service is sealed: wait for the custodians to unseal it"),
    ("err_forbidden", "Il tuo ruolo non consente questa operazione", "Your role does not allow this"),
    ("err_csrf", "Richiesta rifiutata: modulo non valido o scaduto", "Request refused: the form is invalid or stale"),
    ("err_internal", "Errore interno del servizio", "Internal service error"),
    // second factor
    ("nav_totp", "Secondo fattore", "Second factor"),
    ("totp_title", "Secondo fattore (codice temporaneo)", "Second factor (one-time code)"),
    ("totp_intro", "Dopo la password, l'accesso chiede un codice di 6 cifre generato da un'app di autenticazione (TOTP) sul tuo telefono.", "After the password, logging in asks for a 6-digit code made by an authenticator app (TOTP) on your phone."),
    ("totp_required", "Per usare la console devi attivare il secondo fattore.", "You must set up the second factor to use the console."),
    ("totp_enrolled", "Il secondo fattore è attivo. Per cambiare telefono chiedi all'amministratore di azzerarlo.", "The second factor is active. To move to another phone, ask an administrator to reset it."),
    ("totp_new", "Genera il segreto", "Make the secret"),
    ("totp_new_again", "Genera un nuovo segreto", "Make a new secret"),
    ("totp_secret_title", "Il tuo segreto", "Your secret"),
    ("totp_secret", "Segreto da inserire nell'app", "Secret to type into the app"),
    ("totp_qr", "Codice QR da inquadrare con l'app", "QR code to scan with the app"),
    ("totp_uri", "Oppure questo indirizzo otpauth", "Or this otpauth address"),
    ("totp_once", "Il segreto è mostrato solo ora: inseriscilo nell'app, poi conferma con il codice che l'app mostra.", "The secret is shown only now: put it into the app, then confirm with the code the app shows."),
    ("totp_code", "Codice di 6 cifre", "6-digit code"),
    ("totp_confirm", "Conferma", "Confirm"),
    ("totp_code_title", "Codice di accesso", "Login code"),
    ("err_code", "Codice non valido. Usa il codice attuale dell'app: ogni codice vale una volta sola.", "The code is not valid. Use the app's current code: each code works only once."),
    ("err_totp_code", "Codice non valido: il secondo fattore non è stato attivato. Riprova con il codice attuale.", "The code is not valid: the second factor was not set up. Try again with the current code."),
    ("err_totp_expired", "Il segreto mostrato è scaduto: generane uno nuovo.", "The secret shown has expired: make a new one."),
    ("done_totp", "Secondo fattore attivato.", "Second factor set up."),
    ("done_totp_reset", "Secondo fattore azzerato per l'utenza", "Second factor reset for the account"),
    ("totp_none", "L'utenza non aveva un secondo fattore", "The account had no second factor"),
    ("account_totp_reset", "Azzera secondo fattore", "Reset second factor"),
    ("account_totp", "secondo fattore attivo", "second factor active"),
    // consent, re-identify, seal state
    ("consent_form_button", "Stampa il modulo di consenso (PDF)", "Print the consent form (PDF)"),
    ("consent_ref_hint", "Vuoto: il modulo stampato ne riceve uno nuovo.", "Empty: the printed form gets a new one."),
    ("reidentify_title", "Nuova identificazione", "New identification"),
    ("reidentify_intro", "Dopo un cambio di cellulare o e-mail nel registro, i codici vanno ai nuovi recapiti solo dopo una nuova identificazione del titolare.", "After the registry changes the mobile number or e-mail address, codes go to the new contacts only once the holder is identified again."),
    ("reidentify_button", "Registra la nuova identificazione", "Record the new identification"),
    ("done_reidentified", "Nuova identificazione registrata.", "New identification recorded."),
    ("sealed_banner", "Il servizio è sigillato: nessuna operazione che richiede le chiavi (ricerche, attivazioni, consegne dei codici, moduli) è possibile finché i custodi non lo sbloccano.", "The service is sealed: nothing that needs the keys (searches, activations, code deliveries, forms) can be done until the custodians unseal it."),
    ("hsm_title", "Stato dell'HSM", "HSM state"),
    ("hsm_state", "Stato", "State"),
    ("hsm_sealed", "sigillato", "sealed"),
    ("hsm_unsealed", "sbloccato", "unsealed"),
    ("hsm_progress", "Quote di sblocco presentate", "Unseal shares submitted"),
    ("hsm_of", "di", "of"),
    ("hsm_provider", "Fornitore", "Provider"),
];

/// The catalogue key of the headline for an API error code.
pub fn error_key(code: &str) -> &'static str {
    match code {
        "bad_request" => "err_bad_request",
        "invalid" | "invalid_code" => "err_invalid",
        "not_found" => "err_not_found",
        "wrong_state" => "err_wrong_state",
        "refused" => "err_refused",
        "rate_limited" => "err_rate_limited",
        "sealed" => "err_sealed",
        "forbidden" => "err_forbidden",
        "internal" => "err_internal",
        _ => "err_generic",
    }
}

/// The texts of `lang` by key, for the templates.
pub fn catalogue(lang: Lang) -> Value {
    static IT: OnceLock<Value> = OnceLock::new();
    static EN: OnceLock<Value> = OnceLock::new();
    let cell = match lang {
        Lang::It => &IT,
        Lang::En => &EN,
    };
    cell.get_or_init(|| {
        let map: BTreeMap<&str, &str> = MESSAGES
            .iter()
            .map(|(key, it, en)| (*key, if lang == Lang::En { *en } else { *it }))
            .collect();
        Value::from_serialize(&map)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn keys_are_unique_and_every_text_is_translated() {
        let mut seen = BTreeSet::new();
        for (key, it, en) in MESSAGES {
            assert!(seen.insert(*key), "{key} twice");
            assert!(!it.is_empty() && !en.is_empty(), "{key} untranslated");
        }
    }

    #[test]
    fn every_key_a_template_names_is_in_the_catalogue() {
        let keys: BTreeSet<&str> = MESSAGES.iter().map(|m| m.0).collect();
        for (name, source) in super::super::TEMPLATES {
            // `m.key` and `m["key"]`; `m["prefix_" ~ value]` is checked by the values' own
            // lists below.
            for (at, _) in source.match_indices("m.") {
                let before = source[..at].chars().last().unwrap_or(' ');
                if before.is_ascii_alphanumeric() || before == '_' {
                    continue;
                }
                let key: String = source[at + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(keys.contains(key.as_str()), "{name}: m.{key}");
            }
        }
        for prefix in ["state_", "reason_", "job_", "channel_", "action_", "role_"] {
            assert!(keys.iter().any(|k| k.starts_with(prefix)), "{prefix}");
        }
        for s in ["issued", "active", "suspended", "revoked"] {
            assert!(keys.contains(format!("state_{s}").as_str()));
        }
    }
}
