//! The fast-path client: one multiplexed TCP connection shared by clones.
//!
//! Each call registers its request id, queues its frame for the writer task
//! and waits for the reader task to route the reply back. Calls from many
//! tasks are pipelined on the one connection; replies are matched by id, in
//! whatever order they come.
//!
//! - `link`: the shared connection, its writer and its read loop.
//! - `exclusive`: a connection of one call's own, for `get_into` and for
//!   `get`s of tensors over
//!   [`BULK_THRESHOLD`](super::wire::BULK_THRESHOLD).
//! - `pool`: receive buffers reused by `get`s of large tensors.
//! - `reply`: statuses to [`ClientError`], tensors out of replies.

mod exclusive;
mod kept;
mod link;
mod pool;
mod reply;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

use super::local::memfd::FileId;
use super::local::{fds, memfd, SHARE_THRESHOLD};
use super::stream::OutFrame;
use super::wire::{
    encode_frame, Body, ConditionalPut, Limits, Request, Status, WireMeta, FLAG_FD, FLAG_NOT_BULK,
    PREFIX_LEN,
};
use crate::client::{ClientError, L1Options, TensorStore, L1};
use crate::disk::DiskStats;
use crate::stats::{Counters, Stats};
use crate::tensor::codec::{Compression, Encoding};
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;
use exclusive::Exclusive;
use kept::Kept;
use link::{Link, Registration, Reply, Waiter};
use pool::BufferPool;
use reply::{check, tensor_from, unexpected};

/// Options for [`FastClient::connect_with`].
#[derive(Debug, Clone)]
pub struct FastClientOptions {
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one call may wait for its reply; `None` waits forever.
    pub request_timeout: Option<Duration>,
    /// The largest payload accepted from the server: what a reply may make
    /// this client allocate (`get_into` also accepts up to its buffer).
    pub max_payload: u64,
    /// The largest request header the server accepts (its `--max-header`).
    /// A `get_many` is split into requests under it; any other request
    /// over it is refused here, before it can make the server close the
    /// connection that other calls share.
    pub max_header: u32,
    /// Frames queued for the writer before callers wait.
    pub queue: usize,
    /// How long the socket may accept none of the queued requests' bytes
    /// (a server that stopped reading) before the connection is closed:
    /// its calls fail and every queued request, with its payload, is
    /// dropped. `None` waits forever.
    pub write_timeout: Option<Duration>,
    /// `get_into` calls at once, each on a connection of its own; more
    /// wait for one to finish. As many idle connections are kept for the
    /// next calls.
    pub max_exclusive: usize,
    /// A local cache of the tensors this client got or put
    /// ([`L1`](crate::client::L1)); `None` (the default) for none.
    pub l1: Option<L1Options>,
    /// Bytes of idle receive buffers kept for the next `get`s of tensors
    /// over [`BULK_THRESHOLD`](super::wire::BULK_THRESHOLD): a tensor
    /// read into one gives it back when its last clone is dropped, so a
    /// loop of large gets does not page-fault a fresh buffer each time.
    /// `0` keeps none (each such tensor is a `Bytes` over a `Vec` of its
    /// own). Default 128 MiB.
    pub buffer_pool: u64,
    /// The local door only: bytes of mappings kept after their tensors
    /// are dropped, so that the next get of the same stored tensor reuses
    /// the mapping instead of mapping the memfd again (with 4 KiB pages,
    /// most of a large get's cost). A kept mapping holds its lease on the
    /// server: after the server evicts the tensor, its pages stay in
    /// memory (counted in `redstone_local_leased_bytes`, within
    /// `--max-leased`) until the mapping is let go. The least recently got
    /// are let go first, and all of them when the server answers
    /// `LeaseLimit`. `0` (the default) keeps none.
    pub keep_mapped: u64,
}

impl Default for FastClientOptions {
    fn default() -> FastClientOptions {
        FastClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            max_payload: 4 << 30,
            max_header: 64 * 1024,
            queue: 256,
            write_timeout: Some(Duration::from_secs(30)),
            max_exclusive: 16,
            l1: None,
            buffer_pool: 128 << 20,
            keep_mapped: 0,
        }
    }
}

/// Header bytes of a `GET_MANY` besides its keys (an upper bound).
const GET_MANY_HEADER: u64 = 64;
/// Header bytes per key besides the key itself: an archived string (8) and
/// alignment padding, rounded up.
const PER_KEY: u64 = 16;

/// Where the server is.
#[derive(Debug, Clone)]
enum Endpoint {
    /// The fast path over TCP.
    Tcp(std::net::SocketAddr),
    /// The local door's Unix socket.
    Local(std::path::PathBuf),
}

/// Payloads at least this large are copied into a memfd on the blocking
/// pool (a 4 MiB copy into fresh pages takes about a millisecond).
const BLOCKING_FILL: usize = 4 << 20;

/// The prefix of an address naming the local door's socket.
const UNIX_PREFIX: &str = "unix:";

#[derive(Debug)]
struct Inner {
    addr: String,
    /// The resolved server address, for reconnecting and for exclusive
    /// connections.
    peer: Endpoint,
    options: FastClientOptions,
    /// Idle exclusive connections kept for `get_into`.
    spare: Mutex<Vec<Exclusive>>,
    /// One permit per exclusive connection in use.
    exclusive: tokio::sync::Semaphore,
    /// The multiplexed connection; replaced by a new one when it has
    /// closed and a call needs it.
    link: Mutex<Arc<Link>>,
    request_timeout: Option<Duration>,
    l1: Option<L1>,
    /// Receive buffers for large `get`s; `None` when
    /// [`buffer_pool`](FastClientOptions::buffer_pool) is 0.
    pool: Option<Arc<BufferPool>>,
    /// The local door's kept mappings; `None` when
    /// [`keep_mapped`](FastClientOptions::keep_mapped) is 0.
    kept: Option<Kept>,
}

/// A client of the fast path. Cheap to clone; clones share one connection
/// and may be used from many tasks at once.
///
/// ```no_run
/// use redstone::fast::FastClient;
/// use redstone::tensor::Tensor;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = FastClient::connect("127.0.0.1:50052").await?;
/// client.put_tensor("w", Tensor::from_slice::<f32>(vec![2], &[1.0, 2.0])?).await?;
/// let batch = client.get_many(&["w", "missing"]).await?;
/// assert!(batch[0].is_some() && batch[1].is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FastClient {
    inner: Arc<Inner>,
}

impl FastClient {
    /// Connects with default options.
    pub async fn connect(
        addr: impl ToSocketAddrs + std::fmt::Display,
    ) -> Result<FastClient, ClientError> {
        FastClient::connect_with(addr, FastClientOptions::default()).await
    }

    /// Connects to a server's fast path (`--fast`, port 50052 by default),
    /// or, with an address `unix:PATH`, to its local door (`--uds PATH`):
    /// the same calls, but large tensors are shared through memory (see
    /// [`fast::local`](crate::fast::local)).
    pub async fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Display,
        options: FastClientOptions,
    ) -> Result<FastClient, ClientError> {
        let name = addr.to_string();
        let (peer, link) = match name.strip_prefix(UNIX_PREFIX) {
            Some(path) => {
                let peer = Endpoint::Local(path.into());
                let link = open_link(&peer, &name, &options).await?;
                (peer, link)
            }
            None => {
                let stream = connect_stream(addr, &name, options.connect_timeout).await?;
                let peer = stream.peer_addr().map_err(|e| ClientError::Connect {
                    addr: name.clone(),
                    reason: e.to_string(),
                })?;
                let (reader, writer) = stream.into_split();
                (
                    Endpoint::Tcp(peer),
                    Link::open(reader, writer, None, &options),
                )
            }
        };
        let inner = Arc::new(Inner {
            addr: name,
            peer,
            spare: Mutex::new(Vec::new()),
            exclusive: tokio::sync::Semaphore::new(options.max_exclusive.max(1)),
            link: Mutex::new(link),
            request_timeout: options.request_timeout,
            l1: options.l1.as_ref().map(L1::new),
            pool: (options.buffer_pool > 0).then(|| BufferPool::new(options.buffer_pool)),
            kept: Kept::new(options.keep_mapped),
            options,
        });
        Ok(FastClient { inner })
    }

    /// The address this client connected to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call(Request::Ping, Bytes::new()).await.map(drop)
    }

    /// Stores `data` under `key`; its length is checked against `meta`
    /// before anything is sent.
    pub async fn put(
        &self,
        key: &str,
        meta: TensorMeta,
        data: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.put_tensor(key, Tensor::new(meta, data)?).await
    }

    /// Stores a tensor under `key`. The payload is written to the socket
    /// from the tensor's own buffer.
    pub async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        let raw = (tensor.encoding() == Encoding::Raw).then(|| tensor.clone());
        self.put_keeping(key, tensor, raw).await
    }

    /// Puts `tensor` (raw or encoded) and, on success, keeps `raw` in the
    /// L1.
    async fn put_keeping(
        &self,
        key: &str,
        tensor: Tensor,
        raw: Option<Tensor>,
    ) -> Result<(), ClientError> {
        let epoch = self.inner.l1.as_ref().map(L1::epoch);
        let request = Request::Put {
            key: key.to_owned(),
            meta: WireMeta::of(&tensor),
        };
        self.call(request, tensor.into_parts().1).await?;
        if let (Some(l1), Some(epoch)) = (&self.inner.l1, epoch) {
            l1.put_done(key, raw, epoch);
        }
        Ok(())
    }

    /// Stores a tensor under `key`, compressed as `compression` says: with
    /// [`Compression::Lz4`] the payload is byte-shuffled and compressed
    /// here ([`codec`](crate::tensor::codec)), and the server stores (and
    /// charges) the compressed bytes; a tensor that compresses by less
    /// than [`MIN_RATIO`](crate::tensor::codec::MIN_RATIO) is sent raw.
    /// Every get decodes it back, whichever door it comes through.
    ///
    /// ```no_run
    /// use redstone::fast::FastClient;
    /// use redstone::tensor::{codec::Compression, Tensor};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = FastClient::connect("127.0.0.1:50052").await?;
    /// let acts: Vec<f32> = (0..1 << 18).map(|i| (i % 7) as f32 - 3.0).map(|x| x.max(0.0)).collect();
    /// let t = Tensor::from_slice(vec![acts.len() as u64], &acts)?;
    /// client.put_with("acts", t.clone(), Compression::Lz4).await?;
    /// assert_eq!(client.get("acts").await?, Some(t));
    /// # Ok(()) }
    /// ```
    pub async fn put_with(
        &self,
        key: &str,
        tensor: Tensor,
        compression: Compression,
    ) -> Result<(), ClientError> {
        let raw = (tensor.encoding() == Encoding::Raw).then(|| tensor.clone());
        self.put_keeping(key, compression.apply(&tensor), raw).await
    }

    /// Stores a tensor under `key` unless the key was deleted at or after
    /// `since_us` (Unix microseconds, e.g. [`unix_micros`](crate::engine::unix_micros)
    /// when the write began): then [`ClientError::Deleted`]. For writes that
    /// copy a value that may have been deleted meanwhile.
    pub async fn put_if(
        &self,
        key: &str,
        tensor: Tensor,
        since_us: u64,
    ) -> Result<(), ClientError> {
        let epoch = self.inner.l1.as_ref().map(L1::epoch);
        let raw = (tensor.encoding() == Encoding::Raw).then(|| tensor.clone());
        let request = Request::PutIf(Box::new(ConditionalPut {
            key: key.to_owned(),
            meta: WireMeta::of(&tensor),
            since: since_us.to_le_bytes(),
        }));
        self.call(request, tensor.into_parts().1).await?;
        if let (Some(l1), Some(epoch)) = (&self.inner.l1, epoch) {
            l1.put_done(key, raw, epoch);
        }
        Ok(())
    }

    /// The tensor under `key`, or `None`. A raw payload arrives in one
    /// allocation of exactly its size; a compressed one is decoded into
    /// one.
    ///
    /// A tensor over [`BULK_THRESHOLD`](super::wire::BULK_THRESHOLD) comes
    /// over an exclusive connection (one more round trip), so that its
    /// payload never holds up the replies of other calls on the shared one,
    /// into a buffer from the client's pool
    /// ([`FastClientOptions::buffer_pool`]) when one of its size is idle.
    ///
    /// With an L1 ([`FastClientOptions::l1`]), a tensor held there is
    /// returned without a request, and concurrent misses of one key share
    /// one request.
    ///
    /// Over the local door (`unix:PATH`), a tensor the server keeps as a
    /// memfd comes back as a read-only mapping of the server's pages
    /// ([`fast::local`](crate::fast::local)); when the server's leases are
    /// used up (`--max-leased`), its bytes come through the socket instead.
    pub async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match &self.inner.l1 {
            Some(l1) => l1.get(key, || self.fetch(key)).await,
            None => self.fetch(key).await,
        }
    }

    /// The client's L1 cache, if it has one: its [`stats`](L1::stats) and
    /// [`register_metrics`](L1::register_metrics).
    pub fn l1(&self) -> Option<&L1> {
        self.inner.l1.as_ref()
    }

    /// A GET on the shared connection; a tensor over
    /// [`BULK_THRESHOLD`](super::wire::BULK_THRESHOLD)
    /// is answered `Bulk` there (the request says so: `FLAG_NOT_BULK`) and
    /// fetched on an exclusive connection, so that its payload never
    /// holds up the small replies of other calls behind it.
    async fn fetch(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        let request = Request::Get {
            key: key.to_owned(),
        };
        // One deadline for the whole get, the bulk fetch included (the wait
        // for an exclusive connection too).
        self.with_timeout(async {
            let reply = self.exchange(request, Bytes::new()).await?;
            match reply.response.status() {
                Status::NotFound => Ok(None),
                Status::Bulk => self.fetch_bulk(key).await,
                // The local door's leases are used up: the bytes through
                // the socket instead (a `GET_MANY` is never answered with
                // a memfd). Kept mappings hold leases too: they go, so
                // that the next gets may lease again.
                Status::LeaseLimit => {
                    if let Some(kept) = &self.inner.kept {
                        kept.clear();
                    }
                    Ok(self.fetch_many(&[key]).await?.pop().flatten())
                }
                status => {
                    check(status, &reply.response.message)?;
                    let (reply, fresh) = self.mapped(reply)?;
                    let kept = fresh.map(|id| (id, reply.payload.clone()));
                    let tensor = tensor_from(reply, self.inner.options.max_payload)?;
                    // Kept only once it proved a valid tensor.
                    if let (Some(store), Some((id, mapping))) = (&self.inner.kept, kept) {
                        store.insert(id, mapping);
                    }
                    Ok(Some(tensor))
                }
            }
        })
        .await
    }

    /// A reply whose payload was passed as a memfd, with the mapping as its
    /// payload (a kept one, if this client keeps mappings and has one of
    /// that memfd: the new descriptor is closed and its lease released);
    /// any other reply as it is. With the reply, the identity of a memfd
    /// newly mapped that this client would keep.
    fn mapped(&self, mut reply: Reply) -> Result<(Reply, Option<FileId>), ClientError> {
        let Some(passed) = reply.fd.take() else {
            return Ok((reply, None));
        };
        let Some(kept) = &self.inner.kept else {
            reply.payload = passed.map()?;
            return Ok((reply, None));
        };
        let id = passed.file_id()?;
        match kept.get(id, passed.len()) {
            Some(mapping) => {
                reply.payload = mapping;
                Ok((reply, None))
            }
            None => {
                reply.payload = passed.map()?;
                Ok((reply, Some(id)))
            }
        }
    }

    /// A plain GET on an exclusive connection.
    async fn fetch_bulk(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        let limits = limits(&self.inner.options);
        let (_permit, mut conn, reused) = self.exclusive().await?;
        let pool = self.inner.pool.as_ref();
        let mut result = conn.get(key, &limits, pool).await;
        if retry_on_fresh(reused, &result, &conn) {
            conn = Exclusive::connect(&self.inner.peer, &self.inner.options).await?;
            result = conn.get(key, &limits, pool).await;
        }
        self.keep_exclusive(conn, &result);
        result
    }

    /// Reads the tensor under `key` straight from the socket into `dst`,
    /// which must be exactly its byte size; returns its metadata, or `None`
    /// if it is not cached. A size mismatch is [`ClientError::Invalid`] and
    /// leaves `dst` untouched.
    ///
    /// This is the fastest way to load a large tensor: no allocation, no
    /// copy, and a buffer the caller reuses is already mapped (a fresh
    /// 64 MiB allocation costs thousands of page faults). It runs on an
    /// exclusive connection of its own (opened on first use, then kept for
    /// the next call), because the multiplexed connection's reader cannot
    /// borrow the caller's buffer; at most
    /// [`FastClientOptions::max_exclusive`] run at once.
    pub async fn get_into(
        &self,
        key: &str,
        dst: &mut [u8],
    ) -> Result<Option<TensorMeta>, ClientError> {
        self.get_into_with(key, dst, |_| Ok(())).await
    }

    /// [`get_into`](Self::get_into), with `accept` shown the tensor's
    /// metadata before any byte is written to `dst`: an error it returns is
    /// the call's, with `dst` untouched (the payload is read and dropped).
    /// For callers whose buffer has a dtype, shape or order of its own.
    ///
    /// Whatever the outcome, `dst` is written only when this returns
    /// `Ok(Some(_))`, or when it fails while reading the payload or
    /// unpacking a packed one (then partly).
    pub async fn get_into_with(
        &self,
        key: &str,
        dst: &mut [u8],
        accept: impl FnOnce(&TensorMeta) -> Result<(), ClientError>,
    ) -> Result<Option<TensorMeta>, ClientError> {
        crate::engine::validate_key(key)?;
        if let Some(held) = self.inner.l1.as_ref().and_then(|l1| l1.lookup(key)) {
            let meta = copy_into(&held, dst, accept)?;
            // Yields once the task's budget is spent (see `L1::get`).
            tokio::task::consume_budget().await;
            return Ok(Some(meta));
        }
        if self.is_local() {
            // A large tensor is mapped: copied once, at memory speed.
            return self.get_into_local(key, dst, accept).await;
        }
        let mut accept = Some(accept);
        let (_permit, mut conn, reused) = self.exclusive().await?;
        let mut result = self.get_into_on(&mut conn, key, dst, &mut accept).await;
        if retry_on_fresh(reused, &result, &conn) {
            conn = Exclusive::connect(&self.inner.peer, &self.inner.options).await?;
            result = self.get_into_on(&mut conn, key, dst, &mut accept).await;
        }
        self.keep_exclusive(conn, &result);
        result
    }

    /// Whether this client talks to the local door.
    fn is_local(&self) -> bool {
        matches!(self.inner.peer, Endpoint::Local(_))
    }

    /// `get_into` over the local door: the tensor mapped (or received:
    /// see `fetch`), then one copy.
    async fn get_into_local(
        &self,
        key: &str,
        dst: &mut [u8],
        accept: impl FnOnce(&TensorMeta) -> Result<(), ClientError>,
    ) -> Result<Option<TensorMeta>, ClientError> {
        match self.fetch(key).await? {
            Some(tensor) => copy_into(&tensor, dst, accept).map(Some),
            None => Ok(None),
        }
    }

    /// An exclusive connection (an idle one kept from an earlier call,
    /// else a new one, which the bool says) and the permit to use it: at
    /// most [`max_exclusive`](FastClientOptions::max_exclusive) at once.
    async fn exclusive(
        &self,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, Exclusive, bool), ClientError> {
        let inner = &self.inner;
        let permit = inner
            .exclusive
            .acquire()
            .await
            .map_err(|_| ClientError::Unavailable("the client is closed".into()))?;
        let spare = inner
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Ok(match spare {
            Some(conn) => (permit, conn, true),
            None => (
                permit,
                Exclusive::connect(&inner.peer, &inner.options).await?,
                false,
            ),
        })
    }

    /// Keeps `conn` for the next call after an answer that leaves it in
    /// step (after a fatal status the server closes it).
    fn keep_exclusive<T>(&self, conn: Exclusive, result: &Result<T, ClientError>) {
        if matches!(
            result,
            Ok(_) | Err(ClientError::Invalid(_) | ClientError::InvalidArgument(_))
        ) {
            let mut spare = self
                .inner
                .spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if spare.len() < self.inner.options.max_exclusive {
                spare.push(conn);
            }
        }
    }

    async fn get_into_on(
        &self,
        conn: &mut Exclusive,
        key: &str,
        dst: &mut [u8],
        accept: &mut Option<impl FnOnce(&TensorMeta) -> Result<(), ClientError>>,
    ) -> Result<Option<TensorMeta>, ClientError> {
        let mut limits = limits(&self.inner.options);
        limits.max_payload = limits.max_payload.max(dst.len() as u64);
        self.with_timeout(conn.get_into(key, dst, &limits, accept))
            .await
    }

    /// Reads many tensors; the result has one entry per key, in order,
    /// `None` where a key is not cached. The keys go out as one `GET_MANY`
    /// request, or as several when they would not fit in one header
    /// ([`FastClientOptions::max_header`]).
    pub async fn get_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Tensor>>, ClientError> {
        let Some(l1) = &self.inner.l1 else {
            return self.fetch_many(keys).await;
        };
        // Hits from the L1; the rest fetched in batches and kept.
        let mut out: Vec<Option<Tensor>> = keys.iter().map(|k| l1.lookup(k.as_ref())).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            tokio::task::consume_budget().await;
            return Ok(out);
        }
        l1.count_misses(missing.len() as u64);
        let epoch = l1.epoch();
        let wanted: Vec<&str> = missing.iter().map(|&i| keys[i].as_ref()).collect();
        for (&i, found) in missing.iter().zip(self.fetch_many(&wanted).await?) {
            if let Some(tensor) = &found {
                l1.keep(keys[i].as_ref(), tensor, epoch);
            }
            out[i] = found;
        }
        Ok(out)
    }

    async fn fetch_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Tensor>>, ClientError> {
        let budget = u64::from(self.inner.options.max_header).saturating_sub(GET_MANY_HEADER);
        let mut out = Vec::with_capacity(keys.len());
        let mut rest = keys;
        loop {
            // At least one key per request: a key that does not fit alone
            // is refused by `send`, before it reaches the server.
            let mut size = 0;
            let take = rest
                .iter()
                .position(|k| {
                    size += k.as_ref().len() as u64 + PER_KEY;
                    size > budget
                })
                .unwrap_or(rest.len())
                .max(1)
                .min(rest.len());
            let (batch, later) = rest.split_at(take);
            out.extend(self.get_batch(batch).await?);
            rest = later;
            if rest.is_empty() {
                return Ok(out);
            }
        }
    }

    /// One `GET_MANY` request.
    async fn get_batch<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Tensor>>, ClientError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        let n = keys.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let call = self
            .send(Request::GetMany { keys }, Bytes::new(), Waiter::Many(tx))
            .await?;
        let mut out: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let collect = async {
            let mut answered = 0;
            while answered < n.max(1) {
                let Some(reply) = rx.recv().await else {
                    return Err(ClientError::Protocol("the batch ended early".into()));
                };
                let reply = reply?;
                answered += 1;
                if n == 0 {
                    check(reply.response.status(), &reply.response.message)?;
                    break;
                }
                let index = reply.response.index as usize;
                if index >= n {
                    return Err(ClientError::Protocol(format!("batch index {index} of {n}")));
                }
                match reply.response.status() {
                    Status::NotFound => {}
                    status => {
                        check(status, &reply.response.message)?;
                        out[index] = Some(tensor_from(reply, self.inner.options.max_payload)?);
                    }
                }
            }
            Ok(())
        };
        self.with_timeout(collect).await?;
        drop(call);
        Ok(out)
    }

    /// Removes `key`; returns whether it was cached.
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let request = Request::Delete {
            key: key.to_owned(),
        };
        let reply = self
            .forgetting(key, self.call(request, Bytes::new()))
            .await?;
        match reply.response.body {
            Body::Deleted(deleted) => Ok(deleted),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a delete of `key`, dropping it from the L1 before and after
    /// (a get that raced the delete may have kept the old value between).
    async fn forgetting<T>(&self, key: &str, delete: impl Future<Output = T>) -> T {
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(key);
        }
        let result = delete.await;
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(key);
        }
        result
    }

    /// The content digest ([`Tensor::digest`]) of the tensor under `key`,
    /// or `None` if it is not cached; the server computes it, so no
    /// payload crosses the wire.
    pub async fn digest(&self, key: &str) -> Result<Option<u64>, ClientError> {
        let request = Request::Digest {
            key: key.to_owned(),
        };
        match self.call_allow_missing(request).await? {
            None => Ok(None),
            Some(reply) => match reply.response.body {
                Body::Digest(digest) => Ok(Some(digest)),
                other => Err(unexpected(&other)),
            },
        }
    }

    /// Removes `key` only if the tensor under it has this digest; returns
    /// whether it did. A writer takes back its own value this way, never
    /// another's.
    pub async fn delete_if(&self, key: &str, digest: u64) -> Result<bool, ClientError> {
        let request = Request::DeleteIf {
            key: key.to_owned(),
            digest: digest.to_le_bytes(),
        };
        let reply = self
            .forgetting(key, self.call(request, Bytes::new()))
            .await?;
        match reply.response.body {
            Body::Deleted(deleted) => Ok(deleted),
            other => Err(unexpected(&other)),
        }
    }

    /// The server's counters.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let reply = self.call(Request::Stats, Bytes::new()).await?;
        match reply.response.body {
            Body::Stats(stats) => Ok(Counters::from(stats).into()),
            other => Err(unexpected(&other)),
        }
    }

    /// The server's disk tier counters; `None` if it runs without one.
    ///
    /// ```no_run
    /// # async fn f(client: redstone::client::FastClient) -> Result<(), redstone::client::ClientError> {
    /// if let Some(disk) = client.disk_stats().await? {
    ///     println!("{} tensors, {} bytes on disk", disk.entries, disk.bytes);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn disk_stats(&self) -> Result<Option<DiskStats>, ClientError> {
        let reply = self.call(Request::DiskStats, Bytes::new()).await?;
        match reply.response.body {
            Body::DiskStats(stats) => Ok(stats.map(|s| DiskStats::from(*s))),
            other => Err(unexpected(&other)),
        }
    }

    /// One request, one reply; a `NotFound` reply is `Ok(None)`.
    async fn call_allow_missing(&self, request: Request) -> Result<Option<Reply>, ClientError> {
        let reply = self.round_trip(request, Bytes::new()).await?;
        match reply.response.status() {
            Status::NotFound => Ok(None),
            status => check(status, &reply.response.message).map(|()| Some(reply)),
        }
    }

    /// One request, one successful reply.
    async fn call(&self, request: Request, payload: Bytes) -> Result<Reply, ClientError> {
        let reply = self.round_trip(request, payload).await?;
        check(reply.response.status(), &reply.response.message)?;
        Ok(reply)
    }

    /// Sends one request and waits for its one reply, whatever its status,
    /// within the request timeout.
    async fn round_trip(&self, request: Request, payload: Bytes) -> Result<Reply, ClientError> {
        self.with_timeout(self.exchange(request, payload)).await
    }

    /// [`round_trip`](Self::round_trip) without a deadline of its own, for
    /// a caller whose deadline covers more work (one timer per call, not
    /// two).
    async fn exchange(&self, request: Request, payload: Bytes) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        let _call = self.send(request, payload, Waiter::One(tx)).await?;
        rx.await
            .map_err(|_| ClientError::Unavailable("the connection closed".into()))?
    }

    /// The open connection, or a new one if it has closed (the server
    /// restarted, say). Calls that were in flight on the old one failed
    /// with [`ClientError::Unavailable`]; this one goes out on the new one.
    async fn link(&self) -> Result<Arc<Link>, ClientError> {
        let current = Arc::clone(
            &self
                .inner
                .link
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if !current.is_closed() {
            return Ok(current);
        }
        let inner = &self.inner;
        let fresh = open_link(&inner.peer, &inner.addr, &inner.options).await?;
        let mut slot = inner.link.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_closed() {
            *slot = Arc::clone(&fresh);
            // The server let go of the old connection's leases: mappings
            // kept past them would hold its memory uncounted.
            if let Some(kept) = &inner.kept {
                kept.clear();
            }
            Ok(fresh)
        } else {
            // Another call reconnected first; use its connection.
            Ok(Arc::clone(&slot))
        }
    }

    /// Registers a waiter and queues the request. The registration, while
    /// held, keeps the waiter in the pending table; the call drops it when
    /// it is done, however it ends.
    ///
    /// A request the connection's writer never took (it had stopped) was
    /// not sent at all, so it goes out once more on a fresh connection.
    async fn send(
        &self,
        request: Request,
        payload: Bytes,
        waiter: Waiter,
    ) -> Result<Registration, ClientError> {
        check_keys(&request)?;
        let mut waiter = Some(waiter);
        let passed = self.passed(&request, &payload).await?;
        for attempt in 0..2 {
            let link = self.link().await?;
            let id = link.next_id.fetch_add(1, Ordering::Relaxed);
            // Over TCP, every GET on the shared connection leaves large
            // payloads to an exclusive one (see `fetch`); over the local
            // door they are passed as memfds, and a large PUT's payload is
            // too.
            let flags = match (&request, &passed) {
                (Request::Get { .. }, _) if !self.is_local() => FLAG_NOT_BULK,
                (Request::Get { .. }, _) => FLAG_FD,
                (_, Some(_)) => FLAG_FD,
                _ => 0,
            };
            let head = encode_frame(request.opcode(), flags, id, &request, payload.len() as u64)?;
            let header_len = head.len() - PREFIX_LEN;
            let max_header = self.inner.options.max_header;
            if header_len > max_header as usize {
                return Err(ClientError::TooLarge(format!(
                    "the request header is {header_len} bytes, the server accepts {max_header}"
                )));
            }
            {
                let mut pending = link.pending();
                if let Some(why) = &pending.closed {
                    return Err(ClientError::Unavailable(why.clone()));
                }
                let Some(w) = waiter.take() else { break };
                pending.waiters.insert(id, w);
            }
            let call = Registration { link, id };
            let mut frame = match &passed {
                Some(_) => OutFrame::new(head, Bytes::new()),
                None => OutFrame::new(head, payload.clone()),
            };
            frame.fd = passed.clone();
            match call.link.send(frame).await {
                Ok(()) => return Ok(call),
                Err(_) if attempt == 0 => {
                    // Take the waiter back for the next attempt.
                    waiter = call.link.pending().waiters.remove(&id);
                }
                Err(_) => break,
            }
        }
        Err(ClientError::Unavailable("the connection closed".into()))
    }

    /// A large PUT's payload over the local door: a sealed memfd holding it
    /// (filled off the runtime's workers when it takes a while).
    async fn passed(
        &self,
        request: &Request,
        payload: &Bytes,
    ) -> Result<Option<Arc<std::os::fd::OwnedFd>>, ClientError> {
        let is_put = matches!(request, Request::Put { .. } | Request::PutIf(_));
        if !is_put || payload.len() < SHARE_THRESHOLD || !self.is_local() {
            return Ok(None);
        }
        let failed =
            |e: std::io::Error| ClientError::Unavailable(format!("cannot fill a memfd: {e}"));
        let fd = if payload.len() < BLOCKING_FILL {
            memfd::fill(payload).map_err(failed)?
        } else {
            let payload = payload.clone();
            tokio::task::spawn_blocking(move || memfd::fill(&payload))
                .await
                .map_err(|e| failed(std::io::Error::other(e)))?
                .map_err(failed)?
        };
        Ok(Some(Arc::new(fd)))
    }

    /// Ends the shared connection now, failing the calls in flight on it and
    /// dropping the requests it has not finished writing, with their
    /// payloads; the next call connects again. For a caller that must know
    /// a payload it lent is no longer read (a timed-out put of borrowed
    /// memory).
    pub fn reset(&self) {
        let link = Arc::clone(
            &self
                .inner
                .link
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        link.abort("the connection was reset by the client");
    }

    /// Waits for `work` within the request timeout. The caller's
    /// [`Registration`] removes the waiter, so a late reply is discarded.
    async fn with_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let Some(limit) = self.inner.request_timeout else {
            return work.await;
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or(Err(ClientError::Timeout(limit)))
    }
}

/// `tensor`'s bytes copied into `dst`, which must be exactly their size,
/// once `accept` has seen its metadata; `dst` is untouched on an error.
fn copy_into(
    tensor: &Tensor,
    dst: &mut [u8],
    accept: impl FnOnce(&TensorMeta) -> Result<(), ClientError>,
) -> Result<TensorMeta, ClientError> {
    accept(tensor.meta())?;
    if tensor.data().len() != dst.len() {
        return Err(ClientError::Invalid(crate::Error::InvalidSize {
            expected: tensor.meta().byte_size(),
            actual: dst.len() as u64,
        }));
    }
    dst.copy_from_slice(tensor.data());
    Ok(tensor.meta().clone())
}

/// Refuses a key the server would refuse, before it is sent (a key long
/// enough to push the header over the server's limit would otherwise make
/// it close the connection other calls share).
fn check_keys(request: &Request) -> Result<(), ClientError> {
    use crate::engine::validate_key;
    match request {
        Request::Get { key }
        | Request::Put { key, .. }
        | Request::Delete { key }
        | Request::Digest { key }
        | Request::DeleteIf { key, .. } => validate_key(key)?,
        Request::PutIf(put) => validate_key(&put.key)?,
        Request::GetMany { keys } => keys.iter().try_for_each(|k| validate_key(k))?,
        Request::Ping | Request::Stats | Request::DiskStats | Request::Release { .. } => {}
    }
    Ok(())
}

/// A new shared connection to `peer`.
async fn open_link(
    peer: &Endpoint,
    name: &str,
    options: &FastClientOptions,
) -> Result<Arc<Link>, ClientError> {
    match peer {
        Endpoint::Tcp(addr) => {
            let stream = connect_stream(addr, name, options.connect_timeout).await?;
            let (reader, writer) = stream.into_split();
            Ok(Link::open(reader, writer, None, options))
        }
        Endpoint::Local(path) => {
            let connect = tokio::net::UnixStream::connect(path);
            let stream = tokio::time::timeout(options.connect_timeout, connect)
                .await
                .map_err(|_| ClientError::Connect {
                    addr: name.to_owned(),
                    reason: "timed out".into(),
                })?
                .map_err(|e| ClientError::Connect {
                    addr: name.to_owned(),
                    reason: e.to_string(),
                })?;
            // A client claims what its one server sends; the per-connection
            // bound is all it needs.
            let budget = fds::FdBudget::new(usize::MAX);
            let (reader, writer, inbox, outbox) = fds::split(stream, budget);
            Ok(Link::open(reader, writer, Some((inbox, outbox)), options))
        }
    }
}

/// A TCP connection with Nagle off, within `timeout`.
pub(super) async fn connect_stream(
    addr: impl ToSocketAddrs,
    name: &str,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let connect_err = |reason: String| ClientError::Connect {
        addr: name.to_owned(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// Whether a call that failed on a reused exclusive connection should be
/// sent again on a fresh one: the idle connection had died meanwhile (the
/// server's idle timeout, a restart) before any caller's buffer was
/// written, so an earlier call's dead connection never fails this one.
fn retry_on_fresh<T>(reused: bool, result: &Result<T, ClientError>, conn: &Exclusive) -> bool {
    reused && matches!(result, Err(ClientError::Unavailable(_))) && !conn.payload_started()
}

pub(super) fn limits(options: &FastClientOptions) -> Limits {
    Limits {
        max_header: 1 << 20,
        max_payload: options.max_payload,
    }
}

impl TensorStore for FastClient {
    async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        FastClient::put_tensor(self, key, tensor).await
    }
    async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        FastClient::get(self, key).await
    }
    async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        FastClient::delete(self, key).await
    }
    async fn stats(&self) -> Result<Stats, ClientError> {
        FastClient::stats(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelled_calls_leave_no_waiter_behind() {
        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
        });
        let client = FastClient::connect(addr).await.unwrap();
        for i in 0..20 {
            // The caller gives up (as a hedged read's loser does): the
            // call's future is dropped mid-flight.
            let key = format!("k{i}");
            let call = client.get(&key);
            // Long enough that the call has registered, on any machine.
            assert!(tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err());
        }
        let link = client.link().await.unwrap();
        assert!(link.pending().waiters.is_empty(), "waiters left behind");
        drop(client);
        silent.abort();
    }
}
