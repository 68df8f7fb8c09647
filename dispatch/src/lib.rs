//! # dispatch — rendering mailers and delivering them
//!
//! This crate will hold the two halves of getting a code to its holder:
//!
//! - `render`: a `Renderer` trait with print (PDF), e-mail and SMS renderers, run in parallel
//!   with rayon;
//! - `courier`: a `Courier` trait with SMTP (lettre), SMS gateway (reqwest) and spool couriers,
//!   run on tokio.
//!
//! It never depends on `vault`: codes cross from the vault to a renderer as secret types in one
//! visible place, the service crate. Nothing is implemented yet; the mailer and dispatch issues
//! fill it in.
