//! The master's network side: listeners, admission, and the taskmill protocol's sessions.

mod authenticate;
pub(crate) mod dispatch;
mod durable;
pub mod guard;
pub mod keys;
pub(crate) mod listener;
pub(crate) mod peers;
pub(crate) mod session;
