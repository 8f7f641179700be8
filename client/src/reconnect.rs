//! Staying connected: the one backoff policy, and a connection that is made again after a
//! transient failure. Workers, producers and collectors all reconnect this way.

use std::time::{Duration, Instant};

use taskmill_protocol::AuthKey;
use tracing::{error, warn};

use crate::client::{Client, ClientOptions};
use crate::error::ClientError;

/// Capped exponential backoff: each wait doubles the next, up to `max`; [`Backoff::reset`]
/// after a success starts again from the first delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// The first delay after a failure: short, so a blip costs little.
    pub const FIRST: Duration = Duration::from_millis(50);

    /// Starts at [`Backoff::FIRST`] (or `max`, if smaller) and doubles up to `max`.
    pub fn new(max: Duration) -> Self {
        let first = Self::FIRST.min(max);
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] would return, without using it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A connection to one master that is made on first use and again after a transient error,
/// with [`Backoff`] between attempts. Errors that a retry cannot cure (a wrong key, a refused
/// request) are returned to the caller.
#[derive(Debug)]
pub struct Reconnecting {
    role: &'static str,
    addr: String,
    key: AuthKey,
    options: ClientOptions,
    client: Option<Client>,
    backoff: Backoff,
    /// Why the last attempt to connect or call failed, until a connection succeeds again.
    last_error: Option<String>,
    /// How long connect attempts that fail before a verified `Welcome` (a wrong key, a bad
    /// version, garbage, a certificate we do not trust) are retried; `None` returns them at
    /// once. See [`Reconnecting::persist_before_welcome`].
    patience: Option<Duration>,
    /// The last attempt was a connect that failed, not a call on a live connection.
    connect_failed: bool,
    /// When the current run of failed connect attempts began.
    failing_since: Option<Instant>,
}

impl Reconnecting {
    /// A link to `addr` for `role` (named in log lines), waiting at most `max_backoff` between
    /// attempts.
    pub fn new(
        role: &'static str,
        addr: &str,
        key: &AuthKey,
        options: &ClientOptions,
        max_backoff: Duration,
    ) -> Self {
        Self {
            role,
            addr: addr.to_owned(),
            key: key.clone(),
            options: options.clone(),
            client: None,
            backoff: Backoff::new(max_backoff),
            last_error: None,
            patience: None,
            connect_failed: false,
            failing_since: None,
        }
    }

    /// Retries every failure before the master has proved it holds the key, for up to
    /// `window` of consecutive failed attempts, logging each at error level. Such a failure
    /// comes from whoever answers the master's address, and only the master's proof shows
    /// that this is the master: a local user who binds the port while the master restarts,
    /// or a spoofed DNS answer, must not be able to stop a worker for good with one frame.
    /// A wrong key of our own also lands here, which is why each attempt is logged loudly.
    pub fn persist_before_welcome(mut self, window: Duration) -> Self {
        self.patience = Some(window);
        self
    }

    /// The master's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The connection, made now if there is none (one attempt; on failure, pass the error to
    /// [`Reconnecting::failed`]).
    pub async fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            self.connect_failed = true;
            let client = Client::connect_with(&self.addr, &self.key, &self.options).await?;
            self.connect_failed = false;
            self.failing_since = None;
            self.backoff.reset();
            self.last_error = None;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Why the last attempt failed, if no connection has succeeded since.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The connection if there is one, without connecting.
    pub fn connected(&mut self) -> Option<&mut Client> {
        self.client.as_mut()
    }

    /// After a failed connect or call: a transient error drops the connection, is logged, and
    /// waits out the backoff; anything else is returned. Cancel-safe: dropping the future
    /// only cuts the wait short.
    pub async fn failed(&mut self, err: ClientError) -> Result<(), ClientError> {
        let before_welcome = std::mem::take(&mut self.connect_failed);
        let since = if before_welcome {
            *self.failing_since.get_or_insert_with(Instant::now)
        } else {
            Instant::now()
        };
        if !err.is_transient() {
            let Some(window) = self.patience.filter(|_| before_welcome) else {
                return Err(err);
            };
            if since.elapsed() >= window {
                error!(role = self.role, master = %self.addr, cause = %err, failing_for = ?since.elapsed(), "every connect attempt failed before the master proved itself; giving up");
                return Err(err);
            }
            let retry_in = self.backoff.next_delay();
            self.last_error = Some(err.to_string());
            error!(role = self.role, master = %self.addr, cause = %err, ?retry_in, "the handshake failed before the master proved it holds the key (wrong authkey, wrong version, or not our master?); retrying");
            tokio::time::sleep(retry_in).await;
            return Ok(());
        }
        let retry_in = self.backoff.next_delay();
        self.last_error = Some(err.to_string());
        if self.client.take().is_some() {
            warn!(role = self.role, master = %self.addr, cause = %err, ?retry_in, "lost the master; reconnecting");
        } else {
            warn!(role = self.role, master = %self.addr, cause = %err, ?retry_in, "master not reachable");
        }
        tokio::time::sleep(retry_in).await;
        Ok(())
    }

    /// Drops the connection (e.g. after the master announced its drain), to connect afresh on
    /// next use.
    pub fn disconnect(&mut self) {
        self.client = None;
    }

    /// Waits out the backoff without an error to report (e.g. before reconnecting to a master
    /// that announced its drain).
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(300));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::FIRST);
        assert_eq!(
            Backoff::new(Duration::from_millis(10)).next_delay(),
            Duration::from_millis(10),
            "a cap below the first delay wins"
        );
    }
}
