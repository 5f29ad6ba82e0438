//! The containerd client: images, content and blob reads.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use containerd_client::services::v1::{
    DeleteImageRequest, GetImageRequest, Image, InfoRequest, ListImagesRequest, ReadContentRequest,
    content_client::ContentClient, images_client::ImagesClient,
};
use futures::{FutureExt as _, Stream, StreamExt};
use speil_core::Digest;
use speil_core::store::ImageState;
use speil_driver::Runtime;
use speil_driver::io::{Executor, hyper_io};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use speil_core::manifest::MAX_MANIFEST_SIZE;
use speil_core::walk::{ImageWalk, Read, Step};

/// How to reach containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The gRPC socket, e.g. `/run/containerd/containerd.sock`.
    pub socket: PathBuf,
    /// The containerd namespace, e.g. `k8s.io`.
    pub namespace: String,
    /// The content directory (`…/io.containerd.content.v1.content`); blobs are read from it
    /// directly when it is readable, else through the content API.
    pub content_path: Option<PathBuf>,
}

/// A blob's size as the content store reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A stream of blob bytes, in order.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// Where the bytes of a blob range come from.
pub enum BlobBody {
    /// The blob's file in the content directory. The file position is not moved: read
    /// (or `sendfile`) `len` bytes starting at `offset`.
    File(File),
    /// The content API's `Read` stream, yielding exactly `len` bytes from `offset`.
    Stream(ByteStream),
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobBody::File(file) => f.debug_tuple("File").field(file).finish(),
            BlobBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A range of a blob, ready to be sent.
#[derive(Debug)]
pub struct BlobRange {
    /// The blob's total size.
    pub size: u64,
    /// First byte of the range.
    pub offset: u64,
    /// Number of bytes in the range.
    pub len: u64,
    /// The bytes.
    pub body: BlobBody,
}

/// A connection to one containerd, in one namespace, on the runtime `R`.
#[derive(Clone)]
pub struct Containerd<R> {
    rt: R,
    channel: Channel,
    namespace: String,
    namespace_value: AsciiMetadataValue,
    content_path: Option<PathBuf>,
}

impl<R: Runtime> std::fmt::Debug for Containerd<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("runtime", &self.rt.name())
            .field("namespace", &self.namespace)
            .field("content_path", &self.content_path)
            .finish_non_exhaustive()
    }
}

/// The gRPC channel to the unix socket at `socket`, on `rt`: tonic's tasks (the connection
/// and its request buffer) are spawned on `rt`, the socket is `rt`'s. No tonic timeout or
/// keep-alive is set (either would need tokio's timer); deadlines are the core's. The
/// channel reconnects by itself when containerd comes back after a restart.
pub async fn connect_unix<R: Runtime>(rt: &R, socket: &Path) -> Result<Channel> {
    // The URI is not dialled (the connector ignores it); `[::]` only names the authority.
    let endpoint = Endpoint::from_static("http://[::]:50051").executor(Executor(rt.clone()));
    let (rt, target) = (rt.clone(), socket.to_path_buf());
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            rt.connect_unix(&target).map(|conn| conn.map(hyper_io))
        }))
        .await
        .map_err(|source| Error::Connect {
            path: socket.to_path_buf(),
            source,
        })
}

impl<R: Runtime> Containerd<R> {
    /// Connects to containerd as `config` says, on `rt`.
    pub async fn connect(rt: R, config: &Config) -> Result<Containerd<R>> {
        let channel = connect_unix(&rt, &config.socket).await?;
        Containerd::from_channel(
            rt,
            channel,
            &config.namespace,
            config.content_path.as_deref(),
        )
        .await
    }

    /// Wraps a channel built on `rt` (see [`connect_unix`]).
    ///
    /// `content_path` is used only when it is a readable directory now (checked on a
    /// blocking thread); a blob whose file cannot be opened is still read through the
    /// content API.
    pub async fn from_channel(
        rt: R,
        channel: Channel,
        namespace: &str,
        content_path: Option<&Path>,
    ) -> Result<Containerd<R>> {
        let namespace_value: AsciiMetadataValue = namespace
            .parse()
            .map_err(|_| Error::InvalidNamespace(namespace.to_owned()))?;
        if namespace.is_empty() {
            return Err(Error::InvalidNamespace(namespace.to_owned()));
        }
        let content_path = match content_path.map(Path::to_path_buf) {
            None => None,
            Some(path) => {
                let checked = path.clone();
                let readable = rt
                    .spawn_blocking(move || std::fs::read_dir(&checked).is_ok())
                    .await
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                readable.then_some(path)
            }
        };
        Ok(Containerd {
            rt,
            channel,
            namespace: namespace.to_owned(),
            namespace_value,
            content_path,
        })
    }

    /// The runtime this client spawns and waits on.
    pub fn runtime(&self) -> &R {
        &self.rt
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The content directory blobs are read from, when it was readable.
    pub fn content_path(&self) -> Option<&Path> {
        self.content_path.as_deref()
    }

    /// The underlying channel (for CRI calls and other services).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace_value.clone());
        req
    }

    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Every image record of the namespace, as containerd keeps it (not walked).
    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let resp = self
            .images()
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(Error::rpc("images.List"))?;
        Ok(resp.into_inner().images)
    }

    /// One image record by its full name; `None` when there is no such record.
    pub async fn get_image(&self, name: &str) -> Result<Option<Image>> {
        match self
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_owned(),
            }))
            .await
        {
            Ok(resp) => Ok(resp.into_inner().image),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::rpc("images.Get")(status)),
        }
    }

    /// Resolves a full image name (`registry/name:tag`) to the digest it points at.
    pub async fn resolve(&self, name: &str) -> Result<Option<Digest>> {
        match self.get_image(name).await? {
            None => Ok(None),
            Some(image) => target_digest(&image).map(Some),
        }
    }

    /// Deletes an image record (the content stays until containerd collects it).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        match self
            .images()
            .delete(self.request(DeleteImageRequest {
                name: name.to_owned(),
                sync: true,
                target: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(Error::NotFound(format!("image {name}")))
            }
            Err(status) => Err(Error::rpc("images.Delete")(status)),
        }
    }

    /// A blob's size; `None` when the content store does not hold it.
    pub async fn content_info(&self, digest: &Digest) -> Result<Option<ContentInfo>> {
        match self
            .content()
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(resp) => {
                let size = resp.into_inner().info.map(|i| i.size).unwrap_or(-1);
                let size = u64::try_from(size).map_err(|_| Error::Corrupt {
                    digest: digest.clone(),
                    reason: format!("content store reports size {size}"),
                })?;
                Ok(Some(ContentInfo {
                    digest: digest.clone(),
                    size,
                }))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::rpc("content.Info")(status)),
        }
    }

    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        // `Digest` is validated: the algorithm is a fixed name and `hex()` is only [0-9a-f].
        self.content_path.as_ref().map(|root| {
            root.join("blobs")
                .join(digest.algorithm().as_str())
                .join(digest.hex())
        })
    }

    /// Opens `len` bytes of a blob from `offset` (`None`: to the end).
    ///
    /// From the content directory when readable, else through the content API.
    pub async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<BlobRange> {
        if let Some(path) = self.blob_path(digest)
            && let Some((file, size)) = self.open_file(path).await?
        {
            let len = check_range(digest, offset, len, size)?;
            return Ok(BlobRange {
                size,
                offset,
                len,
                body: BlobBody::File(file),
            });
        }
        let size = self
            .content_info(digest)
            .await?
            .ok_or_else(|| Error::NotFound(format!("blob {digest}")))?
            .size;
        let len = check_range(digest, offset, len, size)?;
        let stream = if len == 0 {
            futures::stream::empty().boxed()
        } else {
            self.read_stream(digest, offset, len).await?
        };
        Ok(BlobRange {
            size,
            offset,
            len,
            body: BlobBody::Stream(stream),
        })
    }

    /// Opens a blob's file and reads its size, on a blocking thread (an open or `fstat` on
    /// a slow disk must not stall the runtime's workers). `None`: the file cannot be opened
    /// (absent, or not readable), so the content API answers instead.
    async fn open_file(&self, path: PathBuf) -> Result<Option<(File, u64)>> {
        let at = path.clone();
        let opened = self
            .rt
            .spawn_blocking(move || match File::open(&at) {
                Err(_) => Ok(None),
                Ok(file) => file.metadata().map(|m| Some((file, m.len()))),
            })
            .await
            .and_then(|r| r);
        opened.map_err(|source| Error::Io { path, source })
    }

    async fn read_stream(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream> {
        let to_i64 = |v: u64| {
            i64::try_from(v).map_err(|_| Error::RangeOutOfBounds {
                digest: digest.clone(),
                offset,
                len,
                size: v,
            })
        };
        let resp = self
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: to_i64(offset)?,
                size: to_i64(len)?,
            }))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => Error::NotFound(format!("blob {digest}")),
                _ => Error::rpc("content.Read")(status),
            })?;
        let inner = resp.into_inner();
        let digest = digest.clone();
        // Yields exactly `len` bytes or ends with an error: a short body must never look complete.
        let stream =
            futures::stream::unfold((inner, len, false), move |(mut inner, remaining, done)| {
                let digest = digest.clone();
                async move {
                    if done {
                        return None;
                    }
                    match inner.next().await {
                        Some(Ok(msg)) => {
                            let n = msg.data.len() as u64;
                            if n > remaining {
                                let err = Error::Corrupt {
                                    digest,
                                    reason: "content API sent more bytes than asked".into(),
                                };
                                Some((Err(err), (inner, 0, true)))
                            } else {
                                Some((Ok(Bytes::from(msg.data)), (inner, remaining - n, false)))
                            }
                        }
                        Some(Err(status)) => Some((
                            Err(Error::rpc("content.Read")(status)),
                            (inner, remaining, true),
                        )),
                        None if remaining == 0 => None,
                        None => {
                            let err = Error::Corrupt {
                                digest,
                                reason: format!("content API stream ended {remaining} bytes early"),
                            };
                            Some((Err(err), (inner, remaining, true)))
                        }
                    }
                }
            });
        Ok(stream.boxed())
    }

    /// Reads a whole blob of at most `limit` bytes and checks it against its digest
    /// (for manifests and configs).
    pub async fn read_small(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        let range = self.read_blob(digest, 0, None).await?;
        if range.size > limit {
            return Err(Error::TooLarge {
                digest: digest.clone(),
                size: range.size,
                limit,
            });
        }
        let bytes = match range.body {
            BlobBody::File(file) => {
                let path = self.blob_path(digest).unwrap_or_default();
                let capacity = usize::try_from(range.size).unwrap_or(0);
                // On a blocking thread: a manifest read from disk is file-system work.
                let read = self
                    .rt
                    .spawn_blocking(move || {
                        use std::io::Read;
                        let mut buf = Vec::with_capacity(capacity);
                        file.take(limit + 1).read_to_end(&mut buf).map(|_| buf)
                    })
                    .await
                    .and_then(|r| r);
                Bytes::from(read.map_err(|source| Error::Io { path, source })?)
            }
            BlobBody::Stream(mut stream) => {
                let mut buf = Vec::new();
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                Bytes::from(buf)
            }
        };
        if !digest.verifies(&bytes) {
            return Err(Error::Corrupt {
                digest: digest.clone(),
                reason: "bytes do not match the digest".into(),
            });
        }
        Ok(bytes)
    }

    /// Walks an image record from its target and reports what of it is present.
    pub async fn walk_image(&self, image: &Image) -> Result<ImageState> {
        Ok(self.walk_image_detailed(image).await?.0)
    }

    /// Walks an image and also returns the referenced digests that are absent. What to walk
    /// is the core's [`ImageWalk`]; this answers its questions from the store.
    pub(crate) async fn walk_image_detailed(
        &self,
        image: &Image,
    ) -> Result<(ImageState, BTreeSet<Digest>)> {
        let target = target_digest(image)?;
        let media_type = image.target.as_ref().map_or("", |t| t.media_type.as_str());
        let mut walk = ImageWalk::new(target.clone(), media_type);
        loop {
            match walk.poll_step() {
                Step::Stat(digest) => {
                    let size = self.content_info(&digest).await?.map(|i| i.size);
                    walk.stat(&digest, size);
                }
                Step::Read(digest) => {
                    match self.read_small(&digest, MAX_MANIFEST_SIZE as u64).await {
                        Ok(bytes) => walk.read(&digest, Read::Bytes(&bytes)),
                        Err(e) if e.is_not_found() => walk.read(&digest, Read::NotFound),
                        Err(e @ (Error::Rpc { .. } | Error::Connect { .. })) => return Err(e),
                        Err(e) => {
                            tracing::warn!(%digest, error = %e, "cannot read manifest");
                            walk.read(&digest, Read::Unreadable);
                        }
                    }
                }
                Step::Done => break,
            }
        }
        let walked = walk.finish();
        for (digest, reason) in &walked.skipped {
            tracing::warn!(image = %image.name, %digest, %reason, "cannot walk manifest");
        }
        if walked.truncated {
            tracing::warn!(image = %image.name, "image graph too large, walk truncated");
        }
        Ok((
            ImageState {
                name: image.name.clone(),
                target,
                present: walked.present.into_iter().collect(),
            },
            walked.absent,
        ))
    }

    /// Lists and walks every image of the namespace (images whose target is not a valid
    /// digest are skipped with a warning).
    pub async fn snapshot(&self) -> Result<Vec<ImageState>> {
        Ok(self
            .snapshot_detailed()
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    pub(crate) async fn snapshot_detailed(&self) -> Result<Vec<(ImageState, BTreeSet<Digest>)>> {
        let mut out = Vec::new();
        for image in self.list_images().await? {
            match self.walk_image_detailed(&image).await {
                Ok(s) => out.push(s),
                Err(e @ Error::InvalidDigest { .. }) => {
                    tracing::warn!(image = %image.name, error = %e, "skipping image");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out)
    }
}

fn target_digest(image: &Image) -> Result<Digest> {
    let value = image
        .target
        .as_ref()
        .map(|t| t.digest.clone())
        .unwrap_or_default();
    value
        .parse()
        .map_err(|source| Error::InvalidDigest { value, source })
}

fn check_range(digest: &Digest, offset: u64, len: Option<u64>, size: u64) -> Result<u64> {
    let len = len.unwrap_or(size.saturating_sub(offset));
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(len),
        _ => Err(Error::RangeOutOfBounds {
            digest: digest.clone(),
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(check_range(&d, 0, None, 10).unwrap(), 10);
        assert_eq!(check_range(&d, 4, None, 10).unwrap(), 6);
        assert_eq!(check_range(&d, 10, None, 10).unwrap(), 0);
        assert_eq!(check_range(&d, 2, Some(8), 10).unwrap(), 8);
        assert!(check_range(&d, 2, Some(9), 10).is_err());
        assert!(check_range(&d, 11, None, 10).is_err());
        assert!(check_range(&d, u64::MAX, Some(2), 10).is_err());
    }
}
