//! Conversions between the generated proto types and Redstone's own, and
//! the one mapping of [`Error`] onto gRPC status codes.

use tonic::codegen::http;
use tonic::{Code, Status};

use super::proto;
use crate::stats::{Counters, Stats};
use crate::tensor::meta::TensorMeta;
use crate::Error;

/// The gRPC status for an engine error. This is the only place the mapping
/// is made; the message is the error's own, starting with its name.
pub fn status_from_error(err: &Error) -> Status {
    let code = match err {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        // The gRPC door has no conditional put; mapped for completeness.
        Error::Deleted(_) => Code::FailedPrecondition,
        Error::OutOfMemory { .. } => Code::ResourceExhausted,
        // Only a stored tensor that fails to decode on its way out: gRPC
        // clients never send encoded payloads.
        Error::InvalidEncoding(_) => Code::DataLoss,
        Error::InvalidKey(_)
        | Error::InvalidTensorMetadata(_)
        | Error::InvalidSize { .. }
        | Error::TypeMismatch { .. }
        | Error::Misaligned { .. } => Code::InvalidArgument,
    };
    Status::new(code, err.to_string())
}

/// Rewrites tonic's answer to a request over the receive limit.
///
/// The server's limit is the largest tensor the cache can hold, so such a
/// request is a tensor too big for the cache: the contract says
/// `RESOURCE_EXHAUSTED` with an `OutOfMemory: …` message, where tonic would
/// answer `OUT_OF_RANGE`. tonic refuses the message from its 5-byte length
/// prefix, before reading (or allocating for) the body; this layer only
/// changes the status it reports.
pub fn oversize_request_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    const TOO_LARGE: &str = "Error, decoded message length too large";
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if status.code() == Code::OutOfRange && status.message().starts_with(TOO_LARGE) {
        let message = format!(
            "OutOfMemory: the request is larger than the largest tensor this cache can hold ({})",
            status.message()
        );
        // Only fails on a message that cannot be a header; ours always can.
        let _ = Status::new(Code::ResourceExhausted, message).add_header(headers);
    }
    response
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        status_from_error(&err)
    }
}

impl TryFrom<proto::TensorMeta> for TensorMeta {
    type Error = Error;

    fn try_from(meta: proto::TensorMeta) -> Result<TensorMeta, Error> {
        TensorMeta::from_codes(meta.dtype.into(), meta.shape, meta.layout.into())
    }
}

/// Converts the optional `meta` field of a request: absent is an error.
pub(crate) fn meta_from_proto(meta: Option<proto::TensorMeta>) -> Result<TensorMeta, Error> {
    meta.ok_or_else(|| Error::InvalidTensorMetadata("the request has no meta".into()))?
        .try_into()
}

impl From<&TensorMeta> for proto::TensorMeta {
    fn from(meta: &TensorMeta) -> proto::TensorMeta {
        proto::TensorMeta {
            dtype: meta.dtype().code().into(),
            shape: meta.shape().to_vec(),
            layout: meta.layout().code().into(),
        }
    }
}

impl From<Stats> for proto::StatsResponse {
    fn from(s: Stats) -> proto::StatsResponse {
        proto::StatsResponse {
            entries: s.entries,
            memory_used: s.memory_used,
            memory_limit: s.memory_limit,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            hit_rate: s.hit_rate,
            memory_utilization: s.memory_utilization,
        }
    }
}

impl From<proto::StatsResponse> for Stats {
    fn from(s: proto::StatsResponse) -> Stats {
        // The ratios are derived from the counters, as everywhere else.
        Stats::from(Counters {
            entries: s.entries,
            memory_used: s.memory_used,
            memory_limit: s.memory_limit,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        })
    }
}

/// gRPC status codes as metrics labels, indexed by code number: `ok`,
/// `cancelled`, …, `not_found`, …, `unauthenticated`.
pub(crate) const CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_the_code_numbers() {
        assert_eq!(CODE_NAMES[Code::Ok as usize], "ok");
        assert_eq!(CODE_NAMES[Code::NotFound as usize], "not_found");
        assert_eq!(
            CODE_NAMES[Code::ResourceExhausted as usize],
            "resource_exhausted"
        );
        assert_eq!(
            CODE_NAMES[Code::Unauthenticated as usize],
            "unauthenticated"
        );
    }

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (Error::NotFound("k".into()), Code::NotFound),
            (Error::AlreadyExists("k".into()), Code::AlreadyExists),
            (
                Error::OutOfMemory {
                    needed: 2,
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (Error::InvalidKey("x".into()), Code::InvalidArgument),
            (
                Error::InvalidTensorMetadata("x".into()),
                Code::InvalidArgument,
            ),
            (
                Error::InvalidSize {
                    expected: 1,
                    actual: 2,
                },
                Code::InvalidArgument,
            ),
        ];
        for (err, code) in cases {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn proto_meta_is_validated() {
        let ok = proto::TensorMeta {
            dtype: 1,
            shape: vec![2, 3],
            layout: 2,
        };
        let meta = TensorMeta::try_from(ok.clone()).unwrap();
        assert_eq!(proto::TensorMeta::from(&meta), ok);
        for bad in [
            proto::TensorMeta {
                dtype: 0,
                ..ok.clone()
            },
            proto::TensorMeta {
                dtype: 99,
                ..ok.clone()
            },
            proto::TensorMeta {
                dtype: -3,
                ..ok.clone()
            },
            proto::TensorMeta {
                layout: 0,
                ..ok.clone()
            },
            proto::TensorMeta {
                layout: 7,
                ..ok.clone()
            },
            proto::TensorMeta {
                shape: vec![u64::MAX, 3],
                ..ok.clone()
            },
        ] {
            let err = TensorMeta::try_from(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("InvalidTensorMetadata: "),
                "{err}"
            );
        }
        assert!(meta_from_proto(None).is_err());
    }
}
