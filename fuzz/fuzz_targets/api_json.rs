//! The API's JSON request bodies (`plico::api::fuzzing::json_body`): the first byte picks one
//! of the body types the handlers deserialize, the rest is the body, parsed as the handler's
//! extractor parses it and put through the handler's checks that need no state.
//!
//! Checked: no panic; a refusal never repeats a digit run or a long word of the body (a share,
//! a code, a name); an activation that parses serializes to JSON that parses to the same
//! activation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plico::api::fuzzing::{json_body, BODIES};
use plico_fuzz::{assert_no_echo, assert_no_run, Bytes};

fuzz_target!(|input: &[u8]| {
    let mut bytes = Bytes::new(input);
    let kind = usize::from(bytes.byte()) % BODIES.len();
    let body = bytes.rest();
    if let Err(message) = json_body(kind, body) {
        assert_no_echo(&message, body);
        assert_no_run(&message, body, u8::is_ascii_alphanumeric, 16, "a word");
    }
    if BODIES[kind].ends_with(": Activation") {
        if let Ok(activation) = serde_json::from_slice::<cards::Activation>(body) {
            let json = serde_json::to_vec(&activation).expect("serialize");
            let back: cards::Activation = serde_json::from_slice(&json).expect("its own JSON");
            assert!(
                back == activation,
                "an activation does not survive its own JSON"
            );
        }
    }
});
