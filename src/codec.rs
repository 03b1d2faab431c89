//! The protobuf codec of our services: prost's, except that a request
//! nested too deep to decode is `INVALID_ARGUMENT` naming `data` (the only
//! field that nests), not the `INTERNAL` prost's codec reports.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::json::MAX_DATA_DEPTH;

/// prost's `DecodeError` text when its nesting limit (100) is hit.
const RECURSION_LIMIT_TEXT: &str = "recursion limit reached";

/// The codec named by `build.rs` (`codec_path`) for generated services.
#[derive(Debug, Clone)]
pub struct TaskCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for TaskCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for TaskCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TaskDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        TaskDecoder {
            _message: PhantomData,
        }
    }
}

/// Decodes like prost, translating the nesting-limit error.
#[derive(Debug)]
pub struct TaskDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for TaskDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let mut prost = ProstDecoder::<U>::new(self.buffer_settings());
        prost.decode(buf).map_err(|status| {
            if status.code() == Code::Internal && status.message().contains(RECURSION_LIMIT_TEXT) {
                let description = format!("nested deeper than {MAX_DATA_DEPTH} levels");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("data: {description}"),
                    ErrorDetails::with_bad_request_violation("data", description),
                )
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
