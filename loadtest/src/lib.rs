//! Simulated payment terminals, for Herald's tests and the load-test CLI.

pub mod terminal;
