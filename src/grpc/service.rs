//! The gRPC service: decode a request, call the engine, encode the reply.

use tonic::{Request, Response, Status};

use super::convert::meta_from_proto;
use super::proto::red_stone_server::{RedStone, RedStoneServer};
use super::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, StatsRequest,
    StatsResponse,
};
use super::{MAX_GRPC_MESSAGE, MESSAGE_SLACK};
use crate::engine::Engine;
use crate::tensor::Tensor;
use crate::Error;

/// The `redstone.RedStone` service over an [`Engine`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    engine: Engine,
}

impl GrpcService {
    /// A service answering from `engine`.
    pub fn new(engine: Engine) -> GrpcService {
        GrpcService { engine }
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
        let key = request.into_inner().key;
        let tensor = self.engine.get(&key)?.ok_or(Error::NotFound(key))?;
        let (meta, data) = tensor.into_parts();
        Ok(Response::new(GetResponse {
            meta: Some((&meta).into()),
            data,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let PutRequest { key, meta, data } = request.into_inner();
        let meta = meta_from_proto(meta)?;
        // Refuse what the engine would refuse before copying anything.
        self.engine.admit(&key, &meta, data.len() as u64)?;
        // `data` is a slice of tonic's receive buffer; store a copy that owns
        // an exactly-sized allocation so the budget charges what is retained.
        let tensor = Tensor::new(meta, data)?.compacted();
        self.engine.put(&key, tensor)?;
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deleted = self.engine.delete(&request.into_inner().key)?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn get_stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(self.engine.stats().into()))
    }
}
