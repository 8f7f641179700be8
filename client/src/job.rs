//! Typed tasks: a [`Job`] is a task type with its queue, its result type and its [`Codec`];
//! [`JobHandler`] runs an async fn per task of a job on the worker runtime.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use taskmill::{Failure, Job, Json};
//!
//! #[derive(Serialize, Deserialize)]
//! struct CountPrimes { below: u64 }
//!
//! impl Job for CountPrimes {
//!     const QUEUE: &'static str = "primes";
//!     type Output = u64;
//!     type Codec = Json;
//! }
//!
//! async fn count(task: CountPrimes) -> Result<u64, Failure> {
//!     Ok((2..task.below).filter(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0)).count() as u64)
//! }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use taskmill_protocol::{decode_payload, encode_payload, CodecError, Task};

use crate::handler::{Answer, Failure, Handler};

/// A kind of task: what it carries (the type itself), the queue its tasks go to, what its
/// handler returns, and how both are encoded.
pub trait Job: Sized + Send + Sync + 'static {
    /// The queue tasks of this kind are put on and workers for it serve.
    const QUEUE: &'static str;
    /// What a task's handler returns.
    type Output: Send + 'static;
    /// How tasks and outputs are encoded: [`Json`] so that any language (and
    /// `taskmill-worker --exec`) can read them, [`Bincode`] for compact and fast, [`Raw`]
    /// for bytes or text as they are.
    type Codec: Codec<Self> + Codec<Self::Output>;
}

/// How values of `T` become payloads and back.
pub trait Codec<T>: Send + Sync + 'static {
    fn encode(value: &T) -> Result<Bytes, CodecError>;
    fn decode(payload: &Bytes) -> Result<T, CodecError>;
}

/// JSON (`serde_json`): readable by people, scripts and every language.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode(payload: &Bytes) -> Result<T, CodecError> {
        serde_json::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// bincode, as taskmill's own messages: compact and fast, Rust to Rust.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl<T: Serialize + DeserializeOwned> Codec<T> for Bincode {
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        encode_payload(value)
    }

    fn decode(payload: &Bytes) -> Result<T, CodecError> {
        decode_payload(payload)
    }
}

/// The payload as it is, for tasks and results that are bytes or text already.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn encode(value: &Bytes) -> Result<Bytes, CodecError> {
        Ok(value.clone())
    }

    fn decode(payload: &Bytes) -> Result<Bytes, CodecError> {
        Ok(payload.clone())
    }
}

impl Codec<Vec<u8>> for Raw {
    fn encode(value: &Vec<u8>) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(value))
    }

    fn decode(payload: &Bytes) -> Result<Vec<u8>, CodecError> {
        Ok(payload.to_vec())
    }
}

impl Codec<String> for Raw {
    fn encode(value: &String) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn decode(payload: &Bytes) -> Result<String, CodecError> {
        String::from_utf8(payload.to_vec()).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// Lets a handler use `?` on any error: the attempt fails, and is tried again (see
/// [`Failure::Failed`]).
impl<E: std::error::Error> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure::Failed {
            reason: err.to_string(),
        }
    }
}

impl Failure {
    /// Try again after `after`, for `reason`.
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Failure::Retry {
            after,
            reason: reason.into(),
        }
    }

    /// Never try again: to the dead-letter queue at once, for `reason`.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Failure::Fatal {
            reason: reason.into(),
        }
    }
}

/// Runs `f` on each task of job `J`: a task whose payload does not decode is dead-lettered
/// (it never will), a handler that panics or runs past the task timeout fails the attempt.
/// The tasks of a batch run side by side.
pub struct JobHandler<J, F> {
    f: F,
    timeout: Option<Duration>,
    _job: PhantomData<fn() -> J>,
}

impl<J, F> JobHandler<J, F> {
    /// `timeout`: how long one task may take before its attempt counts as failed.
    pub fn new(f: F, timeout: Option<Duration>) -> Self {
        Self {
            f,
            timeout,
            _job: PhantomData,
        }
    }
}

impl<J, F, Fut> Handler for JobHandler<J, F>
where
    J: Job,
    F: Fn(J) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<J::Output, Failure>> + Send,
{
    async fn handle(&self, tasks: &[Task]) -> Vec<Answer> {
        futures::future::join_all(tasks.iter().map(|task| self.one(task))).await
    }
}

impl<J, F, Fut> JobHandler<J, F>
where
    J: Job,
    F: Fn(J) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<J::Output, Failure>> + Send,
{
    async fn one(&self, task: &Task) -> Answer {
        let input = <J::Codec as Codec<J>>::decode(&task.payload).map_err(|e| {
            Failure::fatal(format!("the task does not decode as {}: {e}", J::QUEUE))
        })?;
        // The handler's future is built inside the guard too: a panic there is the handler's.
        let run = AssertUnwindSafe(async { (self.f)(input).await }).catch_unwind();
        let outcome = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(Failure::Failed {
                        reason: format!("timed out after {limit:?}"),
                    })
                }
            },
            None => run.await,
        };
        let output = match outcome {
            Ok(output) => output?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                return Err(Failure::Failed {
                    reason: format!("the handler panicked: {what}"),
                });
            }
        };
        <J::Codec as Codec<J::Output>>::encode(&output)
            .map_err(|e| Failure::fatal(format!("the result does not encode: {e}")))
    }
}
