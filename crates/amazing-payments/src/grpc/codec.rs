//! The gRPC wire codec: prost's, except that a message that cannot be
//! decoded (a string that is not UTF-8, a truncated field, a wrong wire
//! type) is the caller's mistake, INVALID_ARGUMENT with reason
//! `MALFORMED_MESSAGE`, as a body that is not JSON is over REST; prost's own
//! codec calls it INTERNAL, which would count a client's bug as our failure.

use crate::app::AppError;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The codec the generated services and clients use (`build.rs`).
#[derive(Debug, Clone, Default)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Malformed<ProstDecoder<U>>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Malformed(self.0.decoder())
    }
}

/// A decoder whose failures are the sender's mistake.
#[derive(Debug)]
pub struct Malformed<D>(D);

impl<D: Decoder<Error = Status>> Decoder for Malformed<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        self.0.decode(buf).map_err(|s| {
            AppError::invalid("MALFORMED_MESSAGE", format!("the message cannot be decoded: {}", s.message())).into()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// A message over the size limit (4 MiB) is refused by tonic as OUT_OF_RANGE;
/// gRPC's convention for it, like REST's 413, is RESOURCE_EXHAUSTED, and it
/// gets the same reason as over REST, `BODY_TOO_LARGE`.
pub async fn too_large_is_exhausted(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    match response.extensions().get::<Status>() {
        Some(s) if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large") => {
            let error = AppError::new(
                crate::app::Kind::ResourceExhausted,
                "BODY_TOO_LARGE",
                "the message is larger than the service accepts (4 MiB)",
            );
            Status::from(error).into_http()
        }
        _ => response,
    }
}
