//! `queue.Queue`'s methods on the method channel, with Python's argument binding, its
//! exceptions and its timeouts, on the broker's queues.
//!
//! A `get` leases its item to the channel's session: the caller settles it once the reply is
//! written (or at the next request), and a channel that closes first gives it back.
//! `task_done`/`join` count the puts made through this listener (a native producer's puts
//! and a Rust worker's completions are not Python's unfinished tasks).

use std::time::Duration;

use taskmill_protocol::pickle::{self, Arg, Limits, Request, Value};
use taskmill_protocol::{Delivery, TaskId};
use tokio::time::Instant;

use super::manager::{traceback, Manager, EXPOSED};
use crate::broker::{QueueError, SessionId, Step};
use crate::master::Context;

/// A call's outcome.
pub(super) enum Answer {
    Reply(Vec<u8>),
    /// `('#RETURN', item)` for a task leased to the session, to settle once delivered.
    Item {
        reply: Vec<u8>,
        queue: String,
        task: TaskId,
    },
}

/// An exception to raise in the caller: module, class, message.
type Raise = (&'static str, &'static str, Option<String>);

fn error(module: &'static str, class: &'static str, msg: impl Into<String>) -> Raise {
    (module, class, Some(msg.into()))
}

const EMPTY: Raise = ("queue", "Empty", None);
const FULL: Raise = ("queue", "Full", None);

/// Longest wait a timeout may ask for; longer ones (and infinity) are refused as CPython
/// refuses them.
const MAX_TIMEOUT_SECS: f64 = 1e9;

/// How long a call may wait.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wait {
    No,
    Forever,
    For(Duration),
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::For(d) => Some(Instant::now() + d),
            _ => None,
        }
    }
}

/// Serves one method call.
pub(super) async fn call(
    ctx: &Context,
    manager: &Manager,
    max_frame: usize,
    session: SessionId,
    frame: &[u8],
) -> Answer {
    let limits = Limits {
        max_bytes: frame.len(),
        ..Limits::default()
    };
    let req = match Request::parse(frame, limits) {
        Ok(req) => req,
        Err(err) => return Answer::Reply(traceback("ValueError", &format!("bad request: {err}"))),
    };
    let Some((index, queue)) = req.ident.and_then(|i| manager.queue(i)) else {
        return Answer::Reply(traceback("KeyError", &format!("{:?}", req.ident)));
    };
    let ops = Ops {
        ctx,
        manager,
        session,
        index,
        queue,
        max_frame,
    };
    let done = match req.method {
        "put" => ops.put(&req, "Queue.put", false).await,
        "put_nowait" => ops.put(&req, "Queue.put_nowait", true).await,
        "get" => return ops.get(&req, "Queue.get", false).await,
        "get_nowait" => return ops.get(&req, "Queue.get_nowait", true).await,
        "qsize" | "empty" | "full" => ops.size(&req),
        "task_done" => ops.task_done(&req),
        "join" => ops.join(&req).await,
        "__str__" | "__repr__" => {
            let text = format!("<taskmill queue {queue:?}>");
            return Answer::Reply(pickle::reply("#RETURN", |w| w.str(&text)));
        }
        "#GETVALUE" => {
            return Answer::Reply(pickle::reply("#UNSERIALIZABLE", |w| {
                w.str("a taskmill queue cannot be copied into the client")
            }))
        }
        other => {
            return Answer::Reply(traceback(
                "AttributeError",
                &format!(
                    "method {other:?} of <class 'queue.Queue'> object is not in exposed={EXPOSED:?}"
                ),
            ))
        }
    };
    Answer::Reply(match done {
        Ok(reply) => reply,
        Err((module, class, msg)) => {
            pickle::reply("#ERROR", |w| w.exception(module, class, msg.as_deref()))
        }
    })
}

struct Ops<'a> {
    ctx: &'a Context,
    manager: &'a Manager,
    session: SessionId,
    index: usize,
    queue: &'a str,
    max_frame: usize,
}

fn none() -> Vec<u8> {
    pickle::reply("#RETURN", |w| w.none())
}

impl Ops<'_> {
    async fn put(&self, req: &Request<'_>, func: &str, nowait: bool) -> Result<Vec<u8>, Raise> {
        let params: &[(&str, bool)] = if nowait {
            &[("item", true)]
        } else {
            &[("item", true), ("block", false), ("timeout", false)]
        };
        let args = bind(func, params, req)?;
        let item_arg = args[0].expect("required");
        let item = req.item(item_arg).map_err(|e| {
            error(
                "builtins",
                "ValueError",
                format!("cannot store this item: {e}"),
            )
        })?;
        if self.ctx.phases.drain.is_cancelled() {
            return Err(error(
                "builtins",
                "RuntimeError",
                "the taskmill master is shutting down",
            ));
        }
        // An unbounded queue ignores block and timeout, even bad ones: only then is the
        // capacity needed, so the common put reads no stats.
        let wait = match nowait {
            true => Wait::No,
            false => match wait_of(args[1], args[2]) {
                Ok(wait) => wait,
                Err(_) if self.size_now().1.is_none() => Wait::Forever,
                Err(raise) => return Err(raise),
            },
        };
        let step = self
            .ctx
            .broker
            .put(
                self.session,
                self.queue,
                vec![item.into()],
                wait != Wait::No,
            )
            .map_err(queue_error)?;
        let progress = match step {
            Step::Ready(progress) => progress,
            Step::Wait(waiting) => {
                waiting
                    .wait(wait.deadline(), self.ctx.phases.drain.clone())
                    .await
            }
        };
        if progress.processed == 0 {
            return Err(FULL);
        }
        self.manager.unfinished(self.index).send_modify(|n| *n += 1);
        Ok(none())
    }

    async fn get(&self, req: &Request<'_>, func: &str, nowait: bool) -> Answer {
        let params: &[(&str, bool)] = if nowait {
            &[]
        } else {
            &[("block", false), ("timeout", false)]
        };
        let wait = match bind(func, params, req) {
            Ok(_) if nowait => Ok(Wait::No),
            Ok(args) => wait_of(args[0], args[1]),
            Err(raise) => Err(raise),
        };
        let wait = match wait {
            Ok(wait) => wait,
            Err(raise) => return raised(raise),
        };
        let drain = &self.ctx.phases.drain;
        if drain.is_cancelled() {
            return raised(EMPTY);
        }
        let delivery = Delivery::Lease { millis: None };
        let step = self.ctx.broker.get(
            self.session,
            self.queue,
            1,
            self.max_frame,
            delivery,
            wait != Wait::No,
        );
        let tasks = match step {
            Ok(Step::Ready(tasks)) => tasks,
            Ok(Step::Wait(waiting)) => waiting.wait(wait.deadline(), drain.clone()).await,
            Err(err) => return raised(queue_error(err)),
        };
        let Some(task) = tasks.into_iter().next() else {
            return raised(EMPTY);
        };
        let reply = pickle::return_item(&task.payload, Limits::default());
        Answer::Item {
            reply,
            queue: self.queue.to_owned(),
            task: task.id,
        }
    }

    /// The queue's length and capacity now; a queue nobody has used yet is empty, with the
    /// capacity it will be created with.
    fn size_now(&self) -> (u64, Option<u64>) {
        match self.ctx.broker.inspect(self.queue) {
            Ok(stats) => (stats.len, stats.capacity),
            Err(_) => (0, self.ctx.config.limits.default_capacity),
        }
    }

    fn size(&self, req: &Request<'_>) -> Result<Vec<u8>, Raise> {
        let func = format!("Queue.{}", req.method);
        bind(&func, &[], req)?;
        let (len, capacity) = self.size_now();
        Ok(match req.method {
            "qsize" => pickle::reply("#RETURN", |w| w.int(i128::from(len))),
            "empty" => pickle::reply("#RETURN", |w| w.bool(len == 0)),
            _ => pickle::reply("#RETURN", |w| w.bool(capacity.is_some_and(|c| len >= c))),
        })
    }

    fn task_done(&self, req: &Request<'_>) -> Result<Vec<u8>, Raise> {
        bind("Queue.task_done", &[], req)?;
        let mut ok = true;
        self.manager
            .unfinished(self.index)
            .send_if_modified(|n| match n.checked_sub(1) {
                Some(left) => {
                    *n = left;
                    true
                }
                None => {
                    ok = false;
                    false
                }
            });
        if ok {
            Ok(none())
        } else {
            Err(error(
                "builtins",
                "ValueError",
                "task_done() called too many times",
            ))
        }
    }

    async fn join(&self, req: &Request<'_>) -> Result<Vec<u8>, Raise> {
        bind("Queue.join", &[], req)?;
        let mut unfinished = self.manager.unfinished(self.index).subscribe();
        tokio::select! {
            _ = unfinished.wait_for(|&n| n == 0) => Ok(none()),
            () = self.ctx.phases.stop.cancelled() => Err(error(
                "builtins",
                "RuntimeError",
                "the taskmill master is shutting down",
            )),
        }
    }
}

fn raised((module, class, msg): Raise) -> Answer {
    Answer::Reply(pickle::reply("#ERROR", |w| {
        w.exception(module, class, msg.as_deref())
    }))
}

fn queue_error(err: QueueError) -> Raise {
    error("builtins", "RuntimeError", err.to_string())
}

/// Binds a call's arguments to `params` (name, required) as Python would, or the `TypeError`
/// it would raise (`func` is the qualified name; counts include `self`).
fn bind<'r, 'a>(
    func: &str,
    params: &[(&str, bool)],
    req: &'r Request<'a>,
) -> Result<Vec<Option<&'r Arg<'a>>>, Raise> {
    let type_error = |msg: String| error("builtins", "TypeError", msg);
    let max = params.len();
    let min = params.iter().filter(|p| p.1).count();
    let given = req.args.len();
    if given > max {
        let takes = if min == max {
            format!(
                "{} positional argument{}",
                max + 1,
                if max == 0 { "" } else { "s" }
            )
        } else {
            format!("from {} to {} positional arguments", min + 1, max + 1)
        };
        return Err(type_error(format!(
            "{func}() takes {takes} but {} were given",
            given + 1
        )));
    }
    let mut slots: Vec<Option<&Arg>> = req.args.iter().map(Some).collect();
    slots.resize(max, None);
    for (key, value) in &req.kwds {
        let Some(i) = params.iter().position(|p| p.0 == *key) else {
            return Err(type_error(format!(
                "{func}() got an unexpected keyword argument '{key}'"
            )));
        };
        if slots[i].is_some() {
            return Err(type_error(format!(
                "{func}() got multiple values for argument '{key}'"
            )));
        }
        slots[i] = Some(value);
    }
    let missing: Vec<_> = params
        .iter()
        .zip(&slots)
        .filter(|(p, s)| p.1 && s.is_none())
        .map(|(p, _)| format!("'{}'", p.0))
        .collect();
    if !missing.is_empty() {
        return Err(type_error(format!(
            "{func}() missing {} required positional argument{}: {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(" and ")
        )));
    }
    Ok(slots)
}

/// `block` and `timeout` as `queue.Queue` reads them: `block` false means no wait whatever the
/// timeout; a negative timeout is a `ValueError` even when items are there.
fn wait_of(block: Option<&Arg<'_>>, timeout: Option<&Arg<'_>>) -> Result<Wait, Raise> {
    if block.is_some_and(|b| !b.value.truthy()) {
        return Ok(Wait::No);
    }
    let negative = || {
        error(
            "builtins",
            "ValueError",
            "'timeout' must be a non-negative number",
        )
    };
    let too_large = || error("builtins", "OverflowError", "timeout value is too large");
    let secs = match timeout.map(|t| &t.value) {
        None | Some(Value::None) => return Ok(Wait::Forever),
        Some(Value::Int(n)) => *n as f64,
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::Float(f)) => *f,
        Some(Value::BigInt { negative: true }) => return Err(negative()),
        Some(Value::BigInt { negative: false }) => return Err(too_large()),
        Some(other) => {
            return Err(error(
                "builtins",
                "TypeError",
                format!(
                    "'<' not supported between instances of '{}' and 'int'",
                    other.type_name()
                ),
            ))
        }
    };
    if secs.is_nan() {
        // CPython waits forever on a NaN timeout.
        return Ok(Wait::Forever);
    }
    if secs < 0.0 {
        return Err(negative());
    }
    if secs > MAX_TIMEOUT_SECS {
        return Err(too_large());
    }
    Ok(Wait::For(Duration::from_secs_f64(secs)))
}

/// What the unit tests check: binding and timeouts as text.
#[cfg(test)]
pub(super) mod tests_api {
    use super::*;

    fn text((_, class, msg): Raise) -> String {
        format!("{class}: {}", msg.unwrap_or_default())
    }

    /// The binding error of `method` (`get` or `put`, `qsize`), if any.
    pub fn bind_message(method: &str, req: &Request<'_>) -> Option<String> {
        let params: &[(&str, bool)] = match method {
            "get" => &[("block", false), ("timeout", false)],
            "put" => &[("item", true), ("block", false), ("timeout", false)],
            _ => &[],
        };
        let func = format!("Queue.{method}");
        bind(&func, params, req)
            .err()
            .map(|(_, _, msg)| msg.unwrap_or_default())
    }

    /// The wait a `get` asks for, or its error.
    pub fn wait_message(req: &Request<'_>) -> String {
        let params = [("block", false), ("timeout", false)];
        match bind("Queue.get", &params, req).and_then(|args| wait_of(args[0], args[1])) {
            Ok(wait) => format!("{wait:?}"),
            Err(raise) => text(raise),
        }
    }
}
