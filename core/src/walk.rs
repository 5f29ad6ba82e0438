//! Which blobs an image reaches: the walk from an image's target through indexes and manifests
//! to configs and layers, as a sans-IO state machine on the core's manifest model.
//!
//! Every content store advertises the same way because the decisions are here: which
//! descriptors are manifests to descend into, how large a manifest may be, how many blobs one
//! image may reach, what a missing or unreadable blob means. The store adapter only answers
//! the two questions the walk asks ([`Step::Stat`]: is this blob there, how large;
//! [`Step::Read`]: its bytes) and gets [`Walked`] at the end.

use std::collections::BTreeSet;

use crate::Digest;
use crate::manifest::{self, ChildRole, MAX_MANIFEST_SIZE};

/// The most blobs one image's walk visits; past it the walk stops (and says so).
pub const MAX_WALK_NODES: usize = 10_000;

/// What the walk needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Whether the store holds this blob, and its size: answer with [`ImageWalk::stat`].
    Stat(Digest),
    /// The bytes of this manifest or index (at most [`MAX_MANIFEST_SIZE`]): answer with
    /// [`ImageWalk::read`].
    Read(Digest),
    /// The walk is over: take [`ImageWalk::finish`].
    Done,
}

/// The answer to a [`Step::Read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// The blob's bytes.
    Bytes(&'a [u8]),
    /// The blob went away between the stat and the read.
    NotFound,
    /// The store could not read it (the reason is the adapter's to log).
    Unreadable,
}

/// What a walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    /// Reached blobs the store holds.
    pub present: BTreeSet<Digest>,
    /// Reached blobs the store does not hold.
    pub absent: BTreeSet<Digest>,
    /// Manifests whose children were not walked, and why.
    pub skipped: Vec<(Digest, String)>,
    /// Whether the walk stopped at [`MAX_WALK_NODES`].
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Stat(Digest, bool),
    Read(Digest),
}

/// One image's walk. Drive it: `loop { match walk.poll_step() { … } }`.
#[derive(Debug, Clone)]
pub struct ImageWalk {
    queue: Vec<(Digest, bool)>,
    seen: BTreeSet<Digest>,
    waiting: Waiting,
    walked: Walked,
}

impl ImageWalk {
    /// A walk from `target`, whose descriptor has `media_type` (an empty media type counts as
    /// a manifest: containerd records some targets without one).
    pub fn new(target: Digest, media_type: &str) -> ImageWalk {
        let is_manifest = media_type.is_empty() || manifest::is_manifest_media_type(media_type);
        ImageWalk {
            queue: vec![(target, is_manifest)],
            seen: BTreeSet::new(),
            waiting: Waiting::Nothing,
            walked: Walked::default(),
        }
    }

    /// What the walk needs next. Asking again before answering repeats the question.
    pub fn poll_step(&mut self) -> Step {
        match &self.waiting {
            Waiting::Stat(d, _) => return Step::Stat(d.clone()),
            Waiting::Read(d) => return Step::Read(d.clone()),
            Waiting::Nothing => {}
        }
        while let Some((digest, is_manifest)) = self.queue.pop() {
            if self.seen.contains(&digest) {
                continue;
            }
            if self.seen.len() >= MAX_WALK_NODES {
                self.walked.truncated = true;
                self.queue.clear();
                break;
            }
            self.seen.insert(digest.clone());
            self.waiting = Waiting::Stat(digest.clone(), is_manifest);
            return Step::Stat(digest);
        }
        Step::Done
    }

    /// The answer to [`Step::Stat`]: the blob's size, or `None` when the store lacks it. An
    /// answer for a blob the walk did not ask about is ignored.
    pub fn stat(&mut self, digest: &Digest, size: Option<u64>) {
        let Waiting::Stat(asked, is_manifest) = &self.waiting else {
            return;
        };
        if asked != digest {
            return;
        }
        let is_manifest = *is_manifest;
        self.waiting = Waiting::Nothing;
        let Some(size) = size else {
            self.walked.absent.insert(digest.clone());
            return;
        };
        self.walked.present.insert(digest.clone());
        if !is_manifest {
            return;
        }
        if size > MAX_MANIFEST_SIZE as u64 {
            self.walked.skipped.push((
                digest.clone(),
                format!("manifest of {size} bytes is larger than {MAX_MANIFEST_SIZE}"),
            ));
            return;
        }
        self.waiting = Waiting::Read(digest.clone());
    }

    /// The answer to [`Step::Read`].
    pub fn read(&mut self, digest: &Digest, read: Read<'_>) {
        if self.waiting != Waiting::Read(digest.clone()) {
            return;
        }
        self.waiting = Waiting::Nothing;
        let bytes = match read {
            Read::Bytes(b) => b,
            Read::NotFound => {
                self.walked.present.remove(digest);
                self.walked.absent.insert(digest.clone());
                return;
            }
            Read::Unreadable => {
                self.walked
                    .skipped
                    .push((digest.clone(), "unreadable".to_owned()));
                return;
            }
        };
        match manifest::parse(bytes) {
            Ok(m) => {
                // Reversed onto the stack, so that children are visited in document order.
                for c in m.children().iter().rev() {
                    let descend = matches!(c.role, ChildRole::Manifest | ChildRole::Subject)
                        || manifest::is_manifest_media_type(&c.media_type);
                    self.queue.push((c.digest.clone(), descend));
                }
            }
            Err(e) => self.walked.skipped.push((digest.clone(), e.to_string())),
        }
    }

    /// What the walk found (call after [`Step::Done`]; earlier, what it found so far).
    pub fn finish(self) -> Walked {
        self.walked
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn index(children: &[Digest]) -> Vec<u8> {
        let entries: Vec<String> = children
            .iter()
            .map(|c| format!(r#"{{"mediaType":"{MANIFEST}","digest":"{c}","size":1}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes()
    }

    fn image(config: &Digest, layers: &[Digest]) -> Vec<u8> {
        let layers: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":1}}"#
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
            layers.join(",")
        )
        .into_bytes()
    }

    /// Drives a walk over an in-memory store; returns the result and the questions asked.
    fn run(
        target: &Digest,
        media_type: &str,
        store: &BTreeMap<Digest, Vec<u8>>,
    ) -> (Walked, Vec<Step>) {
        let mut w = ImageWalk::new(target.clone(), media_type);
        let mut asked = Vec::new();
        for _ in 0..100_000 {
            let step = w.poll_step();
            asked.push(step.clone());
            match step {
                Step::Stat(x) => w.stat(&x, store.get(&x).map(|b| b.len() as u64)),
                Step::Read(x) => w.read(&x, Read::Bytes(&store[&x])),
                Step::Done => return (w.finish(), asked),
            }
        }
        panic!("the walk did not end");
    }

    #[test]
    fn index_to_manifests_to_blobs_in_document_order() {
        let m1 = image(&d(3), &[d(4), d(5)]);
        let m2 = image(&d(6), &[d(4)]);
        let mut store = BTreeMap::new();
        store.insert(d(1), index(&[d(2), d(7)]));
        store.insert(d(2), m1);
        store.insert(d(7), m2);
        for n in [3, 4, 5] {
            store.insert(d(n), vec![0; 10]);
        }
        // d(6) (the second manifest's config) is absent.
        let (w, asked) = run(&d(1), INDEX, &store);
        let present: Vec<Digest> = [1, 2, 3, 4, 5, 7].map(d).into();
        assert_eq!(w.present.into_iter().collect::<Vec<_>>(), present);
        assert_eq!(w.absent.into_iter().collect::<Vec<_>>(), vec![d(6)]);
        assert!(w.skipped.is_empty() && !w.truncated);
        let stats: Vec<Digest> = asked
            .iter()
            .filter_map(|s| match s {
                Step::Stat(x) => Some(x.clone()),
                _ => None,
            })
            .collect();
        // Document order, each blob once (d(4) is shared).
        assert_eq!(stats, [1, 2, 3, 4, 5, 7, 6].map(d));
    }

    #[test]
    fn layers_are_never_read_and_bad_manifests_are_skipped() {
        let mut store = BTreeMap::new();
        store.insert(d(1), image(&d(2), &[d(3)]));
        store.insert(d(2), b"not json".to_vec());
        store.insert(d(3), b"{}".to_vec());
        let (w, asked) = run(&d(1), MANIFEST, &store);
        assert!(
            asked
                .iter()
                .all(|s| !matches!(s, Step::Read(x) if *x != d(1)))
        );
        assert_eq!(w.present.len(), 3);
        // A target that says it is a manifest but is not.
        store.insert(d(9), b"{\"schemaVersion\":1}".to_vec());
        let (w, _) = run(&d(9), "", &store);
        assert_eq!(w.skipped.len(), 1, "{w:?}");
        assert!(w.present.contains(&d(9)));
    }

    #[test]
    fn a_manifest_gone_before_its_read_is_absent() {
        let mut w = ImageWalk::new(d(1), MANIFEST);
        assert_eq!(w.poll_step(), Step::Stat(d(1)));
        w.stat(&d(1), Some(100));
        assert_eq!(w.poll_step(), Step::Read(d(1)));
        // Answers to questions not asked change nothing.
        w.stat(&d(1), None);
        w.read(&d(2), Read::NotFound);
        assert_eq!(w.poll_step(), Step::Read(d(1)));
        w.read(&d(1), Read::NotFound);
        assert_eq!(w.poll_step(), Step::Done);
        let r = w.finish();
        assert!(r.present.is_empty());
        assert_eq!(r.absent.into_iter().collect::<Vec<_>>(), vec![d(1)]);
    }

    #[test]
    fn oversized_manifests_are_not_read() {
        let mut w = ImageWalk::new(d(1), INDEX);
        assert_eq!(w.poll_step(), Step::Stat(d(1)));
        w.stat(&d(1), Some(MAX_MANIFEST_SIZE as u64 + 1));
        assert_eq!(w.poll_step(), Step::Done);
        let r = w.finish();
        assert!(r.present.contains(&d(1)));
        assert_eq!(r.skipped.len(), 1);
    }

    #[test]
    fn the_walk_stops_at_its_bound() {
        let mut w = ImageWalk::new(d(0), INDEX);
        assert_eq!(w.poll_step(), Step::Stat(d(0)));
        w.stat(&d(0), Some(10));
        assert_eq!(w.poll_step(), Step::Read(d(0)));
        // An index with more children than the bound.
        let children: Vec<Digest> = (0..MAX_WALK_NODES + 5)
            .map(|i| format!("sha256:{:064x}", i + 1).parse().unwrap())
            .collect();
        let bytes = index(&children);
        w.read(&d(0), Read::Bytes(&bytes));
        let mut stats = 1;
        loop {
            match w.poll_step() {
                Step::Stat(x) => {
                    stats += 1;
                    w.stat(&x, None);
                }
                Step::Read(_) => panic!("absent blobs are not read"),
                Step::Done => break,
            }
        }
        assert_eq!(stats, MAX_WALK_NODES);
        assert!(w.finish().truncated);
    }
}
