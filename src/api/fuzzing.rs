//! Entry point of the fuzz target `api_json` in `fuzz/` (feature `fuzzing`): every request body
//! type the handlers deserialize, parsed as their extractor parses it, then put through the
//! handler's own checks where these need no state but the code policy. Not for the service.

use super::extract::from_json;
use super::ApiError;
use vault::CodePolicy;

/// The request bodies [`json_body`] parses, by number: `route: type`.
pub const BODIES: [&str; 18] = [
    "POST /v1/accounts: CreateRequest",
    "POST /v1/accounts/{id}/password: PasswordRequest",
    "POST /v1/audit/prune: PruneRequest",
    "POST /v1/generate: GenerateBody",
    "POST /v1/cards/{serial}/activate and /reidentify: Activation",
    "POST /v1/cards/{serial}/suspend and /revoke: ReasonBody",
    "POST /v1/cards/{serial}/dispatch: DispatchBody",
    "POST /v1/cards/{serial}/resend: ResendBody",
    "POST /v1/holders/search: SearchBody",
    "POST /v1/mailers/runs: RunBody",
    "POST /v1/mailers/outcomes: OutcomesBody",
    "POST /v1/cards/{serial}/counter-page: CounterBody",
    "POST /v1/reports: OpenBody",
    "POST /v1/reports/{id}/comment and /close: TextBody",
    "POST /v1/reports/{id}/assign: AssignBody",
    "POST /v1/sys/unseal: UnsealRequest",
    "POST /v1/keys/proposals/{id}/approve: ApproveRequest",
    "POST /v1/keys/proposals: a JSON object read by parse_proposal",
];

/// Parses `bytes` as the body number `kind` (modulo [`BODIES`]' length) the way its handler's
/// extractor does, then applies the handler's checks that need only the code policy (CNS).
///
/// # Errors
/// The message a client would get for a refused body.
pub fn json_body(kind: usize, bytes: &[u8]) -> Result<(), String> {
    let policy = CodePolicy::CNS;
    let result: Result<(), ApiError> = match kind % BODIES.len() {
        0 => from_json::<super::accounts::CreateRequest>(bytes).map(|_| ()),
        1 => from_json::<super::accounts::PasswordRequest>(bytes).map(|_| ()),
        2 => from_json::<super::audit::PruneRequest>(bytes).map(|_| ()),
        3 => from_json::<super::batches::GenerateBody>(bytes).map(|_| ()),
        4 => from_json::<cards::Activation>(bytes).map(|_| ()),
        5 => from_json::<super::cards::ReasonBody>(bytes)
            .and_then(|body| super::cards::reason(&body).map(|_| ())),
        6 => from_json::<super::dispatch::DispatchBody>(bytes)
            .and_then(|body| super::dispatch::check_plan_for(&policy, &body.plan)),
        7 => from_json::<super::dispatch::ResendBody>(bytes).map(|_| ()),
        8 => from_json::<super::holders::SearchBody>(bytes)
            .and_then(|body| super::holders::search_key(&body).map(|_| ())),
        9 => from_json::<super::mailers::RunBody>(bytes).and_then(|body| {
            let text = body.plan.as_deref().unwrap_or("whole").trim();
            let plan = super::mailers::plan_for_policy(&policy, "plan", text)?;
            super::mailers::parse_part(&plan, body.part.as_deref().unwrap_or("whole")).map(|_| ())
        }),
        10 => from_json::<super::mailers::OutcomesBody>(bytes).map(|_| ()),
        11 => from_json::<super::mailers::CounterBody>(bytes).map(|_| ()),
        12 => from_json::<super::reports::OpenBody>(bytes).map(|_| ()),
        13 => from_json::<super::reports::TextBody>(bytes).map(|_| ()),
        14 => from_json::<super::reports::AssignBody>(bytes).map(|_| ()),
        15 => from_json::<super::unseal::UnsealRequest>(bytes).map(|_| ()),
        16 => from_json::<super::keys::ApproveRequest>(bytes).map(|_| ()),
        _ => from_json::<serde_json::Value>(bytes)
            .and_then(|body| super::keys::parse_proposal(body).map(|_| ())),
    };
    result.map_err(|e| e.message().to_owned())
}
