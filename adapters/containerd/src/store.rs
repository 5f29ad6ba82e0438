//! containerd as the driver's content store: the [`ContentStore`] port over [`Containerd`].

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use speil_core::Digest;
use speil_core::store::ImageState;
use speil_driver::{BlobBody, ContentStore, Runtime, SourceError, within};

use crate::Containerd;

/// containerd as the driver's [`ContentStore`]. Every read, and every chunk of a streamed
/// blob, gets at most the core's store budget (`NodeConfig::store_timeout`, given at
/// construction): a containerd that stops answering makes requests fail (or go to peers), not
/// hang.
pub struct ContainerdStore<R> {
    client: Containerd<R>,
    timeout: Duration,
    rt: R,
}

impl<R: Runtime> ContainerdStore<R> {
    /// The store over `client`, each answer within `timeout` (the core's store budget).
    pub fn new(rt: R, client: Containerd<R>, timeout: Duration) -> ContainerdStore<R> {
        ContainerdStore {
            client,
            timeout,
            rt,
        }
    }

    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::Error>>,
    ) -> Result<Result<T, crate::Error>, SourceError> {
        within(&self.rt, self.timeout, call).await.ok_or_else(|| {
            SourceError::new(format!(
                "containerd did not answer within {:?}",
                self.timeout
            ))
        })
    }
}

/// A stream whose every item must arrive within `timeout`, else it ends with an error.
fn stalls_fail<R, S>(
    rt: R,
    stream: S,
    timeout: Duration,
) -> BoxStream<'static, std::io::Result<bytes::Bytes>>
where
    R: Runtime,
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    futures::stream::unfold(Some(stream), move |state| {
        let rt = rt.clone();
        async move {
            let mut stream = state?;
            match within(&rt, timeout, stream.next()).await {
                Some(Some(item)) => Some((item, Some(stream))),
                Some(None) => None,
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("containerd sent nothing for {timeout:?}"),
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

fn source_error(e: crate::Error) -> Result<(), SourceError> {
    if e.is_not_found() {
        Ok(())
    } else {
        Err(SourceError::new(e))
    }
}

impl<R: Runtime> ContentStore for ContainerdStore<R> {
    fn resolve_tag<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, SourceError>> {
        async move {
            match self.within(self.client.resolve(image)).await? {
                Ok(d) => Ok(d),
                Err(e) => source_error(e).map(|()| None),
            }
        }
        .boxed()
    }

    fn size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, SourceError>> {
        async move {
            match self.within(self.client.content_info(digest)).await? {
                Ok(info) => Ok(info.map(|i| i.size)),
                Err(e) => source_error(e).map(|()| None),
            }
        }
        .boxed()
    }

    fn read_manifest<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<bytes::Bytes>, SourceError>> {
        async move {
            let limit = speil_core::manifest::MAX_MANIFEST_SIZE as u64;
            match self.within(self.client.read_small(digest, limit)).await? {
                Ok(b) => Ok(Some(b)),
                Err(e) => source_error(e).map(|()| None),
            }
        }
        .boxed()
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<BlobBody>, SourceError>> {
        async move {
            match self
                .within(self.client.read_blob(digest, offset, Some(len)))
                .await?
            {
                Ok(range) => Ok(Some(match range.body {
                    crate::BlobBody::File(file) => BlobBody::File {
                        file,
                        offset: range.offset,
                        len: range.len,
                    },
                    crate::BlobBody::Stream(s) => BlobBody::Stream(stalls_fail(
                        self.rt.clone(),
                        s.map(|r| r.map_err(std::io::Error::other)),
                        self.timeout,
                    )),
                })),
                Err(e) => source_error(e).map(|()| None),
            }
        }
        .boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<ImageState>, SourceError>> {
        async move {
            self.within(self.client.snapshot())
                .await?
                .map_err(SourceError::new)
        }
        .boxed()
    }
}
