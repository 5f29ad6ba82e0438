//! The advertiser: which keys this node announces in the DHT (SPEC.md §4).
//!
//! Fed with [`StoreEvent`]s, it keeps the desired key set — for every image whose name is
//! `registry/repository[:tag][@digest]` and that the filter allows, its tag key and the digest
//! keys of every reachable blob that is present — and emits the difference to what is already
//! announced as [`Output::Advertise`] / [`Output::Withdraw`] batches. A digest
//! shared by several images stays announced until no remaining image references it. It also
//! asks for a full store re-check at a fixed interval, since garbage collection removes content
//! without an event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::filter::RegistryFilter;
use crate::keys::Key;
use crate::node::Output;
use crate::store::{ImageState, StoreEvent};

/// An image name split into its parts: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path.
    pub repository: String,
    /// The tag, when the name has one.
    pub tag: Option<String>,
    /// The digest, when the name has one.
    pub digest: Option<Digest>,
}

impl ImageName {
    /// Splits a containerd image name. Names that are not of the form
    /// `registry/repository[:tag][@digest]` (like CRI's `sha256:<id>` records) give `None`.
    pub fn parse(name: &str) -> Option<ImageName> {
        let (rest, digest) = match name.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().ok()?)),
            None => (name, None),
        };
        let (registry, path) = rest.split_once('/')?;
        if registry.is_empty() || path.is_empty() {
            return None;
        }
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last..].rfind(':') {
            Some(i) => (&path[..last + i], Some(path[last + i + 1..].to_owned())),
            None => (path, None),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        if tag.is_none() && digest.is_none() {
            return None;
        }
        Some(ImageName {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }
}

/// Per-registry counts of what is announced (the `spegel_advertised_*` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdvertisedCounts {
    /// Tag keys.
    pub image_tags: usize,
    /// Distinct image targets (index or manifest digests images point at).
    pub image_digests: usize,
    /// Distinct content digests (every advertised digest key).
    pub content_digests: usize,
}

#[derive(Default)]
struct RegistryKeys {
    tags: BTreeSet<Key>,
    images: BTreeSet<Digest>,
    contents: BTreeSet<Digest>,
}

/// The advertiser. `P` is only the peer type of the node's [`Output`] it writes.
#[derive(Debug)]
pub struct Advertiser<P> {
    filter: RegistryFilter,
    recheck_interval: Duration,
    images: BTreeMap<String, ImageState>,
    advertised: BTreeSet<Key>,
    counts: BTreeMap<String, AdvertisedCounts>,
    next_recheck: Option<Instant>,
    connected: bool,
    /// Commands in the node's own type: the node moves them into its queue as they are.
    outputs: VecDeque<Output<P>>,
}

impl<P> Advertiser<P> {
    /// An advertiser that asks for a full re-check every `recheck_interval` (60 s in production).
    pub fn new(filter: RegistryFilter, recheck_interval: Duration) -> Self {
        Advertiser {
            filter,
            recheck_interval,
            images: BTreeMap::new(),
            advertised: BTreeSet::new(),
            counts: BTreeMap::new(),
            next_recheck: None,
            connected: false,
            outputs: VecDeque::new(),
        }
    }

    /// Keys currently announced.
    pub fn advertised(&self) -> &BTreeSet<Key> {
        &self.advertised
    }

    /// Per-registry counts of what is announced.
    pub fn counts(&self) -> &BTreeMap<String, AdvertisedCounts> {
        &self.counts
    }

    /// The images known from the store.
    pub fn images(&self) -> impl Iterator<Item = &ImageState> {
        self.images.values()
    }

    /// Whether the store is connected (a snapshot arrived since the last disconnect).
    pub fn store_connected(&self) -> bool {
        self.connected
    }

    /// A fact about the store.
    pub(crate) fn handle_store_event(&mut self, now: Instant, event: StoreEvent) {
        match event {
            StoreEvent::Snapshot(images) => {
                self.images = images.into_iter().map(|i| (i.name.clone(), i)).collect();
                self.connected = true;
                self.next_recheck = Some(now + self.recheck_interval);
            }
            StoreEvent::ImagePut(image) => {
                self.images.insert(image.name.clone(), image);
            }
            StoreEvent::ImageDeleted { name } => {
                self.images.remove(&name);
            }
            StoreEvent::Disconnected => {
                // What was announced stays announced until a fresh snapshot says otherwise:
                // containerd restarting does not remove content, and peers that fetch from us
                // in between get a 404 and move on.
                self.connected = false;
                self.next_recheck = None;
                return;
            }
        }
        self.reconcile();
    }

    /// Time passed. Early calls are harmless.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_recheck.is_some_and(|at| at <= now) {
            self.next_recheck = Some(now + self.recheck_interval);
            self.outputs.push_back(Output::RecheckStore);
        }
    }

    /// Moves the commands decided so far to the end of `queue`.
    pub(crate) fn take_outputs(&mut self, queue: &mut VecDeque<Output<P>>) {
        queue.append(&mut self.outputs);
    }

    /// When the next re-check is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_recheck
    }

    fn reconcile(&mut self) {
        let mut desired = BTreeSet::new();
        let mut per_registry: BTreeMap<String, RegistryKeys> = BTreeMap::new();
        for image in self.images.values() {
            let Some(name) = ImageName::parse(&image.name) else {
                continue;
            };
            if !self
                .filter
                .allows(&name.registry, &name.repository, name.tag.as_deref())
            {
                continue;
            }
            let entry = per_registry.entry(name.registry.clone()).or_default();
            // A tag is only worth announcing when its target is here to serve.
            if image.present.contains(&image.target) {
                if let Some(tag) = &name.tag {
                    let key = Key::tag(&name.registry, &name.repository, tag);
                    desired.insert(key.clone());
                    entry.tags.insert(key);
                }
                entry.images.insert(image.target.clone());
            }
            for d in &image.present {
                desired.insert(Key::digest(d));
                entry.contents.insert(d.clone());
            }
        }
        self.counts = per_registry
            .into_iter()
            .map(|(r, k)| {
                (
                    r,
                    AdvertisedCounts {
                        image_tags: k.tags.len(),
                        image_digests: k.images.len(),
                        content_digests: k.contents.len(),
                    },
                )
            })
            .collect();
        let add: Vec<Key> = desired.difference(&self.advertised).cloned().collect();
        let remove: Vec<Key> = self.advertised.difference(&desired).cloned().collect();
        if !remove.is_empty() {
            self.outputs.push_back(Output::Withdraw(remove));
        }
        if !add.is_empty() {
            self.outputs.push_back(Output::Advertise(add));
        }
        self.advertised = desired;
    }
}

#[cfg(test)]
// A test picks any origin for its simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn image(name: &str, target: &str, present: &[&str]) -> ImageState {
        let mut present: Vec<Digest> = present.iter().map(|p| d(p)).collect();
        present.sort();
        ImageState {
            name: name.to_owned(),
            target: d(target),
            present,
        }
    }

    fn drain(a: &mut Advertiser<u32>) -> Vec<Output<u32>> {
        let mut q = VecDeque::new();
        a.take_outputs(&mut q);
        q.into()
    }

    #[test]
    fn parses_image_names() {
        let n = ImageName::parse("127.0.0.1:5000/test/small:v1").unwrap();
        assert_eq!(n.registry, "127.0.0.1:5000");
        assert_eq!(n.repository, "test/small");
        assert_eq!(n.tag.as_deref(), Some("v1"));
        let dg = d("x");
        let n = ImageName::parse(&format!("docker.io/library/alpine@{dg}")).unwrap();
        assert_eq!(n.tag, None);
        assert_eq!(n.digest, Some(dg.clone()));
        assert!(ImageName::parse(dg.as_str()).is_none());
        assert!(ImageName::parse("alpine").is_none());
        assert!(ImageName::parse("docker.io/library/alpine").is_none());
        assert!(ImageName::parse("docker.io/x:").is_none());
    }

    #[test]
    fn snapshot_events_and_withdrawals() {
        let t0 = Instant::now();
        let mut a = Advertiser::new(RegistryFilter::default(), Duration::from_secs(60));
        let small = image("r.io/a/small:v1", "idx", &["idx", "m", "cfg", "l1"]);
        let by_digest = ImageState {
            name: format!("r.io/a/small@{}", d("idx")),
            ..small.clone()
        };
        let id_record = ImageState {
            name: d("cfg").to_string(),
            ..small.clone()
        };
        a.handle_store_event(
            t0,
            StoreEvent::Snapshot(vec![small.clone(), by_digest, id_record]),
        );
        let out = drain(&mut a);
        let Output::Advertise(keys) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(keys.len(), 5, "one tag + four digests: {keys:?}");
        assert!(keys.contains(&Key::tag("r.io", "a/small", "v1")));
        assert_eq!(
            a.counts()["r.io"],
            AdvertisedCounts {
                image_tags: 1,
                image_digests: 1,
                content_digests: 4
            }
        );
        // A tag pulled later shares a layer.
        a.handle_store_event(
            t0,
            StoreEvent::ImagePut(image("r.io/a/other:v2", "idx2", &["idx2", "l1"])),
        );
        assert_eq!(
            drain(&mut a),
            vec![Output::Advertise(
                [Key::digest(&d("idx2")), Key::tag("r.io", "a/other", "v2")]
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            )]
        );
        // Deleting the tag record: digests stay while the @digest and id records reference them.
        a.handle_store_event(
            t0,
            StoreEvent::ImageDeleted {
                name: "r.io/a/small:v1".into(),
            },
        );
        assert_eq!(
            drain(&mut a),
            vec![Output::Withdraw(vec![Key::tag("r.io", "a/small", "v1")])]
        );
        // The other image is deleted: its own index goes, the shared layer stays.
        a.handle_store_event(
            t0,
            StoreEvent::ImageDeleted {
                name: "r.io/a/other:v2".into(),
            },
        );
        let out = drain(&mut a);
        let Output::Withdraw(keys) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(keys.contains(&Key::digest(&d("idx2"))));
        assert!(!keys.contains(&Key::digest(&d("l1"))));
    }

    #[test]
    fn filters_apply_to_advertising_and_gc_is_noticed() {
        let t0 = Instant::now();
        let f = RegistryFilter::new(&["https://r.io"], &[":secret$"]).unwrap();
        let mut a = Advertiser::new(f, Duration::from_secs(60));
        a.handle_store_event(
            t0,
            StoreEvent::Snapshot(vec![
                image("r.io/a/x:v1", "i1", &["i1", "l1"]),
                image("r.io/a/x:secret", "i2", &["i2"]),
                image("other.io/a/x:v1", "i3", &["i3"]),
            ]),
        );
        let out = drain(&mut a);
        assert_eq!(
            out,
            vec![Output::Advertise(
                [
                    Key::digest(&d("i1")),
                    Key::digest(&d("l1")),
                    Key::tag("r.io", "a/x", "v1")
                ]
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
            )]
        );
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        a.handle_timeout(t0 + Duration::from_secs(59));
        assert!(drain(&mut a).is_empty());
        a.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(drain(&mut a), vec![Output::RecheckStore]);
        // GC removed the layer without an event; the re-check's snapshot withdraws it.
        a.handle_store_event(
            t0 + Duration::from_secs(61),
            StoreEvent::Snapshot(vec![image("r.io/a/x:v1", "i1", &["i1"])]),
        );
        assert_eq!(
            drain(&mut a),
            vec![Output::Withdraw(vec![Key::digest(&d("l1"))])]
        );
    }

    #[test]
    fn tag_without_its_target_is_not_advertised() {
        let mut a = Advertiser::new(RegistryFilter::default(), Duration::from_secs(60));
        a.handle_store_event(
            Instant::now(),
            StoreEvent::Snapshot(vec![image("r.io/a/x:v1", "i1", &["l1"])]),
        );
        assert_eq!(
            drain(&mut a),
            vec![Output::Advertise(vec![Key::digest(&d("l1"))])]
        );
        assert!(a.store_connected());
        assert_eq!(a.counts()["r.io"].image_tags, 0);
    }
}
