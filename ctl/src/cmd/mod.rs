//! One module per group of commands, and what they share: connecting with the common flags,
//! waits, and printing JSON.

pub mod admin;
pub mod dead;
pub mod put;
pub mod take;

use std::time::Duration;

use anyhow::Context as _;
use taskmill::{AuthKey, Client, ClientOptions, TlsClient, Wait};
use taskmill_cli::{say, usage};

use crate::cli::Common;

/// The key and TLS settings of `common`, read and checked: done before anything else (stdin
/// included), so a mistake in them exits 2 having done nothing.
pub struct Prepared<'a> {
    common: &'a Common,
    key: AuthKey,
    tls: Option<TlsClient>,
}

impl<'a> Prepared<'a> {
    pub fn new(common: &'a Common) -> anyhow::Result<Self> {
        let key = common.connect.key.load().map_err(usage)?;
        let tls = common.connect.tls_client().map_err(usage)?;
        Ok(Self { common, key, tls })
    }

    /// An authenticated connection to the master, naming it in the error if there is none.
    pub async fn connect(self) -> anyhow::Result<Client> {
        let master = &self.common.connect.master;
        let options = ClientOptions {
            connect_timeout: self.common.timeout,
            request_timeout: self.common.timeout,
            tls: self.tls,
        };
        Client::connect_with(master, &self.key, &options)
            .await
            .with_context(|| format!("master {master}"))
    }
}

/// Reads and checks the common flags, then connects: for commands with no input of their own.
pub async fn connect(common: &Common) -> anyhow::Result<Client> {
    Prepared::new(common)?.connect().await
}

/// A `--wait` flag as the protocol's wait: absent or zero, none.
pub fn wait(flag: Option<Duration>) -> Wait {
    match flag {
        None => Wait::No,
        Some(d) if d.is_zero() => Wait::No,
        Some(d) => Wait::Millis(d.as_millis().try_into().unwrap_or(u64::MAX)),
    }
}

/// One JSON document on stdout, on one line (scripts read it, people use `jq`).
pub fn print_json(value: &serde_json::Value) {
    say(value);
}
