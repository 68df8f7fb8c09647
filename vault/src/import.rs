//! Bulk import of manufacturer PIN/PUK files (issue 4, in progress).
//!
//! - [`parse`]: the streaming parser and validator of the file format in `docs/formats.md`:
//!   every line checked against the code policy and the serial rule, problems reported by line
//!   and field, never with a code.
//!
//! Still to come: the batch layout in the store (sorted encrypted segments), staging and the
//! all-or-nothing commit, duplicate and quarantine checks, age decryption.

pub mod parse;
