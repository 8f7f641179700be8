//! The manager conversation after authentication: one server request per connection
//! (`dummy`, `create`, `incref`, `decref`, `accept_connection`, ...), and, after
//! `accept_connection`, the method channel that carries `(ident, method, args, kwds)` calls
//! one at a time until the client closes it.
//!
//! Every request gets a reply in bounded time or the connection is closed: CPython's client
//! has no timeout of its own, so a request left unanswered would hang the script forever.
//! A call that waits (a blocking `get`, `put` or `join`) is dropped when its client closes
//! the connection, so a `get` whose client has gone takes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use taskmill_protocol::pickle::{self, Limits, Request, Value};
use taskmill_protocol::TaskId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::queue::{self, Answer};
use super::wire::{read_frame, write_frame};
use super::{Delivery, PythonConfig};
use crate::broker::SessionId;
use crate::master::Context;

/// What `public_methods(queue.Queue())` gives on Python 3.11 and 3.12; the client builds its
/// proxy class from this list, so 3.13 clients (which would also list `shutdown`) work too.
pub(super) const EXPOSED: [&str; 9] = [
    "empty",
    "full",
    "get",
    "get_nowait",
    "join",
    "put",
    "put_nowait",
    "qsize",
    "task_done",
];

/// The registered names and what Python's queue methods need beyond the broker.
pub(super) struct Manager {
    /// typeid → queue index.
    names: HashMap<String, usize>,
    /// The queues by index; a queue's ident is `q<index>`.
    queues: Vec<String>,
    /// Per queue: Python puts not yet matched by a `task_done`, for `join`.
    unfinished: Mutex<HashMap<usize, watch::Sender<u64>>>,
}

impl Manager {
    pub fn new(config: &PythonConfig) -> Self {
        let mut queues: Vec<String> = Vec::new();
        let mut names = HashMap::new();
        for (typeid, queue) in &config.names {
            let index = match queues.iter().position(|q| q == queue) {
                Some(i) => i,
                None => {
                    queues.push(queue.clone());
                    queues.len() - 1
                }
            };
            names.insert(typeid.clone(), index);
        }
        Self {
            names,
            queues,
            unfinished: Mutex::new(HashMap::new()),
        }
    }

    /// The queue an ident names.
    pub fn queue(&self, ident: &str) -> Option<(usize, &str)> {
        let index: usize = ident.strip_prefix('q')?.parse().ok()?;
        // `q01` is not `q1`: only the idents handed out are known.
        (format!("q{index}") == ident).then_some(())?;
        self.queues.get(index).map(|q| (index, q.as_str()))
    }

    /// The unfinished-task count of queue `index`.
    pub fn unfinished(&self, index: usize) -> watch::Sender<u64> {
        let mut all = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(index)
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Serves one authenticated connection: its request, and the method channel if it asks.
    pub async fn serve(
        &self,
        ctx: &Context,
        config: &PythonConfig,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        // An authenticated client sends its request at once; one that does not is not let to
        // hold its connection slot.
        let first = tokio::time::timeout(
            ctx.config.handshake_timeout,
            read_frame(&mut rd, config.max_frame),
        );
        let frame = match first.await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => return debug!(%peer, cause = %err, "python request unreadable"),
            Err(_) => return debug!(%peer, "python client sent no request after authenticating"),
        };
        ctx.counters.python.requests.fetch_add(1, Ordering::Relaxed);
        let (reply, channel) = self.server_request(&frame);
        if write(ctx, &mut wr, &reply).await.is_err() {
            return;
        }
        if let Some(name) = channel {
            debug!(%peer, %name, "python method channel opened");
            let session = ctx.broker.open_session();
            let mut channel = Channel {
                ctx,
                manager: self,
                config,
                session,
                rd,
                wr,
                held: None,
            };
            let cause = channel.run().await;
            let requeued = ctx.broker.close_session(session);
            match cause {
                Ok(()) => debug!(%peer, requeued, "python method channel closed"),
                Err(cause) => warn!(%peer, requeued, %cause, "python method channel closed"),
            }
            if requeued > 0 {
                info!(%peer, requeued, "gave back the items the closed python connection held");
            }
        }
    }

    /// The reply to a server request, and the thread name if it opens a method channel.
    fn server_request(&self, frame: &[u8]) -> (Vec<u8>, Option<String>) {
        let req = match Request::parse(frame, limits(frame.len())) {
            Ok(req) => req,
            Err(err) => {
                return (
                    traceback("ValueError", &format!("bad request: {err}")),
                    None,
                )
            }
        };
        let one_str = |what: &str| match (req.args.as_slice(), req.kwds.is_empty()) {
            ([arg], true) => match arg.value {
                Value::Str(s) => Ok(s),
                _ => Err(traceback("TypeError", &format!("{what} must be a str"))),
            },
            _ => Err(traceback(
                "TypeError",
                &format!("{}() takes one argument, {what}", req.method),
            )),
        };
        let reply = match req.method {
            "dummy" | "number_of_objects" | "debug_info" if !req.args.is_empty() => traceback(
                "TypeError",
                &format!("Server.{}() takes no arguments", req.method),
            ),
            "dummy" => pickle::reply("#RETURN", |w| w.none()),
            "number_of_objects" => pickle::reply("#RETURN", |w| w.int(self.queues.len() as i128)),
            "debug_info" => {
                let text = self
                    .queues
                    .iter()
                    .enumerate()
                    .map(|(i, q)| format!("  q{i}: taskmill queue {q:?}\n"))
                    .collect::<String>();
                pickle::reply("#RETURN", |w| w.str(&text))
            }
            "create" => match one_str("typeid") {
                Ok(typeid) => match self.names.get(typeid) {
                    Some(&index) => pickle::reply("#RETURN", |w| {
                        w.str(&format!("q{index}"));
                        w.mark();
                        EXPOSED.iter().for_each(|m| w.str(m));
                        w.tuple(EXPOSED.len(), true);
                        w.tuple(2, false);
                    }),
                    None => traceback(
                        "KeyError",
                        &format!(
                            "{typeid:?} is not registered on this master (--python-register NAME=QUEUE)"
                        ),
                    ),
                },
                Err(reply) => reply,
            },
            // Queues belong to the master, so references are accepted and not counted: a
            // decref never drops a queue, and one from before a restart is no error.
            "incref" | "decref" => match one_str("ident") {
                Ok(ident) if self.queue(ident).is_some() => pickle::reply("#RETURN", |w| w.none()),
                Ok(ident) => traceback("KeyError", &format!("{ident:?}")),
                Err(reply) => reply,
            },
            "accept_connection" => match one_str("name") {
                Ok(name) => {
                    return (
                        pickle::reply("#RETURN", |w| w.none()),
                        Some(name.to_owned()),
                    )
                }
                Err(reply) => reply,
            },
            "shutdown" => traceback(
                "AssertionError",
                "shutdown is disabled: a Python script may not stop the taskmill master",
            ),
            "get_methods" => traceback(
                "NotImplementedError",
                "get_methods is not served: register the queues without exposed=None",
            ),
            other => traceback("AssertionError", &format!("{other:?} unrecognized")),
        };
        (reply, None)
    }
}

/// Scanner limits for a request of `len` bytes.
fn limits(len: usize) -> Limits {
    Limits {
        max_bytes: len,
        ..Limits::default()
    }
}

/// `('#TRACEBACK', text)`: the client raises `RemoteError` showing `text`, which ends like
/// CPython's, with the exception's type and message.
pub(super) fn traceback(exception: &str, message: &str) -> Vec<u8> {
    let text = format!(
        "Traceback (most recent call last):\n  (in taskmill-master's Python listener)\n{exception}: {message}\n"
    );
    pickle::reply("#TRACEBACK", |w| w.str(&text))
}

/// Writes a reply within the master's write timeout.
async fn write(ctx: &Context, wr: &mut OwnedWriteHalf, reply: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(ctx.config.write_timeout, write_frame(wr, reply)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::other("the client did not read its reply")),
    }
}

/// Waits until everything the master has recorded so far is durable (at once without a
/// durable store), so that no reply acknowledges what a crash could still lose: a Python put
/// survives a restart like any other. An error once the log has failed.
async fn durable(ctx: &Context) -> Result<(), String> {
    let Some(mut durability) = ctx.store.durability() else {
        return Ok(());
    };
    let position = ctx.store.position();
    loop {
        {
            let now = durability.borrow_and_update();
            if let Some(failure) = &now.failed {
                return Err(format!("the durable log failed: {failure}"));
            }
            if position <= now.upto {
                return Ok(());
            }
        }
        if durability.changed().await.is_err() {
            return Err("the durable log stopped".into());
        }
    }
}

/// Resolves when the client closes its end, or sends before its reply (CPython's client
/// never does: one request at a time per connection).
async fn closed(rd: &mut BufReader<OwnedReadHalf>) {
    let _ = rd.fill_buf().await;
}

/// One method channel.
struct Channel<'a> {
    ctx: &'a Context,
    manager: &'a Manager,
    config: &'a PythonConfig,
    session: SessionId,
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// With [`Delivery::OnNextRequest`]: the item last handed out, settled by the next request.
    held: Option<(String, TaskId)>,
}

impl Channel<'_> {
    async fn run(&mut self) -> Result<(), String> {
        let ctx = self.ctx;
        // Renewing a held lease well before it runs out.
        let renew = ctx.config.limits.lease_timeout / 3;
        loop {
            let next = tokio::select! {
                frame = read_frame(&mut self.rd, self.config.max_frame) => frame,
                () = ctx.phases.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(renew.max(Duration::from_millis(10))), if self.held.is_some() => {
                    if let Some((queue, task)) = &self.held {
                        let _ = ctx.broker.touch(self.session, queue, &[*task], None);
                    }
                    continue;
                }
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(err) => return Err(err.to_string()),
            };
            if let Some((queue, task)) = self.held.take() {
                let _ = ctx.broker.ack(self.session, &queue, &[task]);
            }
            ctx.counters.python.requests.fetch_add(1, Ordering::Relaxed);
            let call = queue::call(
                ctx,
                self.manager,
                self.config.max_frame,
                self.session,
                &frame,
            );
            let answer = tokio::select! {
                answer = call => answer,
                () = closed(&mut self.rd) => {
                    return match self.rd.buffer().is_empty() {
                        true => Ok(()),
                        false => Err("a request arrived before the previous one was answered".into()),
                    };
                }
            };
            // Group commit: the wait is one fsync, shared with every other connection.
            durable(ctx).await?;
            match answer {
                Answer::Reply(reply) => {
                    write(ctx, &mut self.wr, &reply)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Answer::Item { reply, queue, task } => {
                    // Written, or the item goes back when the session closes.
                    write(ctx, &mut self.wr, &reply)
                        .await
                        .map_err(|e| e.to_string())?;
                    match self.config.delivery {
                        Delivery::OnWrite => {
                            let _ = ctx.broker.ack(self.session, &queue, &[task]);
                        }
                        Delivery::OnNextRequest => self.held = Some((queue, task)),
                    }
                }
            }
        }
    }
}
