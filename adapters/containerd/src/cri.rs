//! The two CRI calls speil needs, as hand-written protobuf messages (`runtime.v1`).
//!
//! containerd-client has no CRI bindings; these messages carry only the fields speil reads or
//! sets, which protobuf allows (unknown fields are skipped).

use std::collections::{BTreeMap, HashMap};

use speil_driver::Runtime;
use tonic::codegen::http::uri::PathAndQuery;

use crate::client::Containerd;
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {
    #[prost(bool, tag = "1")]
    verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeCondition {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(bool, tag = "2")]
    status: bool,
    #[prost(string, tag = "3")]
    reason: String,
    #[prost(string, tag = "4")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeStatus {
    #[prost(message, repeated, tag = "1")]
    conditions: Vec<RuntimeCondition>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<RuntimeStatus>,
    #[prost(map = "string, string", tag = "2")]
    info: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionRequest {
    #[prost(string, tag = "1")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(string, tag = "2")]
    runtime_name: String,
    #[prost(string, tag = "3")]
    runtime_version: String,
    #[prost(string, tag = "4")]
    runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ImageSpec {
    #[prost(string, tag = "1")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PullImageRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PullImageResponse {
    #[prost(string, tag = "1")]
    image_ref: String,
}

/// One condition of the CRI runtime status (`RuntimeReady`, `NetworkReady`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriCondition {
    /// The condition's type.
    pub kind: String,
    /// Whether it holds.
    pub status: bool,
    /// Machine-readable reason when it does not.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// The answer to CRI `RuntimeService/Status` with `verbose = true`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CriStatus {
    /// The runtime's conditions.
    pub conditions: Vec<CriCondition>,
    /// The verbose info map (containerd: `config`, `golang`, `lastCNILoadStatus`, …).
    pub info: BTreeMap<String, String>,
}

impl CriStatus {
    /// The live CRI configuration as JSON (`info["config"]`), when the runtime reports it.
    pub fn config_json(&self) -> Option<&str> {
        self.info.get("config").map(String::as_str)
    }
}

impl<R: Runtime> Containerd<R> {
    async fn cri_unary<Req, Resp>(&self, path: &'static str, message: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel());
        grpc.ready().await.map_err(|e| {
            Error::rpc(path)(tonic::Status::unavailable(format!(
                "containerd not ready: {e}"
            )))
        })?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = grpc
            .unary(
                tonic::Request::new(message),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map_err(Error::rpc(path))?;
        Ok(resp.into_inner())
    }

    /// CRI `RuntimeService/Status` with `verbose = true`.
    pub async fn cri_status(&self) -> Result<CriStatus> {
        let resp: StatusResponse = self
            .cri_unary(
                "/runtime.v1.RuntimeService/Status",
                StatusRequest { verbose: true },
            )
            .await?;
        Ok(CriStatus {
            conditions: resp
                .status
                .map(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .map(|c| CriCondition {
                    kind: c.r#type,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            info: resp.info.into_iter().collect(),
        })
    }

    /// CRI `RuntimeService/Version`: the runtime's own version (`runtime_version`, e.g.
    /// `1.6.20~ds1`, `v2.3.4`).
    pub async fn cri_runtime_version(&self) -> Result<String> {
        let resp: VersionResponse = self
            .cri_unary(
                "/runtime.v1.RuntimeService/Version",
                VersionRequest {
                    version: "v1".to_owned(),
                },
            )
            .await?;
        Ok(resp.runtime_version)
    }

    /// CRI `ImageService/PullImage`: pulls `image` exactly as kubelet does (through the CRI's
    /// registry configuration and `hosts.toml`). Returns the image reference the runtime
    /// reports (containerd: `sha256:<config digest>`).
    pub async fn cri_pull(&self, image: &str) -> Result<String> {
        let resp: PullImageResponse = self
            .cri_unary(
                "/runtime.v1.ImageService/PullImage",
                PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                    }),
                },
            )
            .await?;
        Ok(resp.image_ref)
    }
}
