//! The gRPC service: decode a request, call the engine, encode the reply.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::{meta_from_proto, CODE_NAMES};
use super::proto::red_stone_server::{RedStone, RedStoneServer};
use super::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, StatsRequest,
    StatsResponse,
};
use super::{MAX_GRPC_MESSAGE, MESSAGE_SLACK};
use crate::engine::{Engine, Lookup};
use crate::metrics::{Door, DoorRecorder, ServerMetrics};
use crate::tensor::codec::Encoding;
use crate::tensor::Tensor;
use crate::Error;

/// The `redstone.RedStone` service over an [`Engine`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    engine: Engine,
    recorder: Arc<DoorRecorder>,
}

/// The ops of the gRPC door, as [`GrpcService::observe`] indexes them.
const OPS: [&str; 4] = ["get", "put", "delete", "stats"];
const GET: usize = 0;
const PUT: usize = 1;
const DELETE: usize = 2;
const STATS: usize = 3;

impl GrpcService {
    /// A service answering from `engine`, with metrics of its own.
    pub fn new(engine: Engine) -> GrpcService {
        let metrics = ServerMetrics::new(engine.clone());
        GrpcService::with_metrics(engine, metrics)
    }

    /// A service answering from `engine` that counts its requests into
    /// `metrics`.
    pub fn with_metrics(engine: Engine, metrics: ServerMetrics) -> GrpcService {
        let recorder = Arc::new(metrics.recorder(Door::Grpc, &OPS, &CODE_NAMES));
        GrpcService { engine, recorder }
    }

    /// Runs one request's `work`, counting and (at debug level) logging
    /// it.
    async fn observe<T>(
        &self,
        op: usize,
        key: &str,
        size: usize,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let span = tracing::debug_span!("request", door = "grpc", op = OPS[op], key, size);
        let result = work.instrument(span.clone()).await;
        let _entered = span.enter();
        let elapsed = started.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        } as usize;
        self.recorder.record(op, code, elapsed);
        let status = CODE_NAMES.get(code).copied().unwrap_or("unknown");
        tracing::debug!(status, latency_us = elapsed.as_micros() as u64, "answered");
        result.map(Response::new)
    }

    /// The raw tensor under `key` (an encoded one decoded: the original
    /// contract has no encodings), counted and logged as a `get`. Both the
    /// tonic method and the copy-free route (`get.rs`) answer from here.
    pub(crate) async fn get_raw(&self, key: String) -> Result<Tensor, Status> {
        let response = self
            .observe(GET, &key, 0, async {
                let found = match self.engine.lookup(&key)? {
                    Lookup::Found(tensor) => Some(tensor),
                    // A disk read blocks: off the runtime's workers.
                    Lookup::OnDisk(read) => tokio::task::spawn_blocking(move || read.read())
                        .await
                        .map_err(|e| Status::internal(format!("a server task failed: {e}")))?,
                    Lookup::Missing => None,
                };
                let tensor = found.ok_or_else(|| Error::NotFound(key.clone()))?;
                if tensor.encoding() == Encoding::Raw {
                    return Ok(tensor);
                }
                // Decoded off the runtime's workers.
                Ok(tokio::task::spawn_blocking(move || tensor.decoded())
                    .await
                    .map_err(|e| Status::internal(format!("a server task failed: {e}")))??)
            })
            .await?;
        Ok(response.into_inner())
    }

    /// The tonic server wrapping this service, with message limits raised to
    /// the largest tensor the engine can hold (capped by gRPC's 4 GiB frame
    /// length), instead of tonic's default of 4 MiB.
    pub fn into_server(self) -> RedStoneServer<GrpcService> {
        let limit = self
            .engine
            .memory_limit()
            .saturating_add(MESSAGE_SLACK)
            .min(MAX_GRPC_MESSAGE as u64) as usize;
        RedStoneServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }
}

#[tonic::async_trait]
impl RedStone for GrpcService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (meta, data) = self.get_raw(request.into_inner().key).await?.into_parts();
        Ok(Response::new(GetResponse {
            meta: Some((&meta).into()),
            data,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let PutRequest { key, meta, data } = request.into_inner();
        self.observe(PUT, &key, data.len(), async {
            let meta = meta_from_proto(meta)?;
            // Refuse what the engine would refuse before copying anything.
            self.engine.admit(&key, &meta, data.len() as u64)?;
            // `data` is a slice of tonic's receive buffer; store a copy that
            // owns an exactly-sized allocation so the budget charges what is
            // retained.
            let tensor = Tensor::new(meta, data)?.compacted();
            self.engine.put(&key, tensor)?;
            Ok(PutResponse {})
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().key;
        self.observe(DELETE, &key, 0, async {
            let deleted = self.engine.delete(&key)?;
            Ok(DeleteResponse { deleted })
        })
        .await
    }

    async fn get_stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.observe(STATS, "", 0, async { Ok(self.engine.stats().into()) })
            .await
    }
}
