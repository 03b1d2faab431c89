//! Unit tests of the manager.

mod handle_internals;
