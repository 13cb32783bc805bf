//! The gRPC echo backend for standalone mode and tests (`sluice.echo.v1.Echo`, plaintext
//! HTTP/2 with prior knowledge, as gRPC backends in a cluster usually are): every call
//! answers with what the backend saw (method, authority, metadata) and who it is.
//!
//! ```text
//!  grpcurl -plaintext -authority grpc.example.com \
//!      -proto snapshot/proto/sluice/echo/v1/echo.proto localhost:8080 sluice.echo.v1.Echo/Echo
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;

use sluice_snapshot::echo::echo_server::{Echo, EchoServer};
use sluice_snapshot::echo::{EchoReply, EchoRequest, FailRequest};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::echo::EchoIdentity;

/// Where `serve` puts the request's :authority for the handlers.
const AUTHORITY_HEADER: &str = "x-sluice-echo-authority";

/// The echo service of one backend.
#[derive(Debug, Clone)]
pub struct GrpcEcho {
    identity: EchoIdentity,
}

impl GrpcEcho {
    fn reply(&self, method: &str, metadata: &tonic::metadata::MetadataMap, message: String) -> EchoReply {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for entry in metadata.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
                let value = value.to_str().unwrap_or_default();
                headers
                    .entry(name.as_str().to_string())
                    .and_modify(|joined| {
                        joined.push_str(", ");
                        joined.push_str(value);
                    })
                    .or_insert_with(|| value.to_string());
            }
        }
        // tonic keeps the :authority out of the metadata; `serve` copies it in.
        let authority = headers.remove(AUTHORITY_HEADER).unwrap_or_default();
        EchoReply {
            message,
            method: format!("/sluice.echo.v1.Echo/{method}"),
            authority,
            headers: headers.into_iter().collect(),
            namespace: self.identity.namespace.clone(),
            service: self.identity.service.clone(),
            pod: self.identity.pod.clone(),
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let reply = self.reply("Echo", request.metadata(), request.get_ref().message.clone());
        Ok(Response::new(reply))
    }

    async fn echo_two(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let reply = self.reply("EchoTwo", request.metadata(), request.get_ref().message.clone());
        Ok(Response::new(reply))
    }

    type StreamStream = ReplyStream;

    async fn stream(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<Self::StreamStream>, Status> {
        let template = self.reply("Stream", request.metadata(), String::new());
        let replies = request
            .into_inner()
            .map(move |message| message.map(|message| EchoReply { message: message.message, ..template.clone() }));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<EchoReply>, Status> {
        let FailRequest { code, message } = request.into_inner();
        let mut status = Status::new(tonic::Code::from_i32(code), message);
        status.metadata_mut().insert("x-echo-trailer", tonic::metadata::MetadataValue::from_static("yes"));
        Err(status)
    }
}

/// Serves the gRPC echo on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, identity: EchoIdentity) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let authority = tower::util::MapRequestLayer::new(|mut request: http::Request<tonic::body::Body>| {
        let authority = request.uri().authority().map(|a| a.as_str().to_string());
        if let Some(value) = authority.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
            request.headers_mut().insert(AUTHORITY_HEADER, value);
        }
        request
    });
    let served = tonic::transport::Server::builder()
        .layer(authority)
        .add_service(EchoServer::new(GrpcEcho { identity }))
        .serve_with_incoming(incoming);
    if let Err(error) = served.await {
        tracing::warn!("the gRPC echo backend stopped: {error}");
    }
}

/// Binds `address` and serves the gRPC echo in a task; the returned handle stops it.
pub async fn start(address: SocketAddr, identity: EchoIdentity) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    Ok(tokio::spawn(serve(listener, identity)))
}
