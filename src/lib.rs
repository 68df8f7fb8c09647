//! plico
