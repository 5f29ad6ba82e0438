//! A rogue DHT member, for the flood tests against a real `speil registry`: identities of its
//! own that connect to a node's router port as often as the node lets them, hold those
//! connections, and send Kademlia `ADD_PROVIDER` messages for keys of their choosing as fast as
//! the node reads them — many messages on one inbound stream, as libp2p-kad reads them, rather
//! than one DHT query per key as an honest member publishes. A node without a pre-shared key
//! cannot tell it from a member.
//!
//! It speaks the wire protocol itself (length-prefixed protobuf, `dht.proto`'s `Message`), so
//! nothing in it depends on how speil or libp2p-kad publish. Runs on the tokio runtime of the
//! test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use speil_driver::tokio::Tokio;
use speil_p2p::{Keypair, RuntimeExecutor, TcpTransport};
use tokio::sync::watch;

/// The protobuf `Message.type` of `ADD_PROVIDER` and `FIND_NODE`.
const ADD_PROVIDER: u8 = 2;
const FIND_NODE: u8 = 4;

/// Addresses each record claims (the node keeps at most 4).
const ADDRESSES_PER_RECORD: usize = 8;

/// Identities that dial at once.
const WAVE: usize = 16;

/// Messages written per `write_all`.
const BATCH: usize = 512;

/// What an identity's dials came to, once all are answered: the node's peer id when one
/// connected.
type Settled = Option<Result<Option<PeerId>, String>>;

/// A set of rogue identities connected to one node.
pub struct Rogue {
    identities: Vec<Identity>,
    target: PeerId,
}

struct Identity {
    keypair: Keypair,
    control: libp2p_stream::Control,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Identity {
    /// Stops the identity's swarm, which closes its connections.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One key of the flood, `n`: 34 bytes, as a sha256 multihash is.
pub fn flood_key(n: u64) -> Vec<u8> {
    let mut key = vec![0x12, 0x20];
    key.extend_from_slice(b"speil-flood-key-");
    key.extend_from_slice(&n.to_be_bytes());
    key.resize(34, 0xee);
    key
}

impl Rogue {
    /// `identities` identities, each dialling `target` (a router address) `dials` times at
    /// once, `WAVE` identities at a time (a node admits only so many handshakes at once);
    /// returns once every dial has been answered (connected or refused), each wave within
    /// `within`.
    pub async fn connect(
        target: SocketAddr,
        identities: usize,
        dials: usize,
        within: Duration,
    ) -> Result<Rogue> {
        ensure!(target.ip().is_loopback(), "the rogue only dials loopback");
        let addr = speil_p2p::tcp_multiaddr(target);
        let mut held = Vec::with_capacity(identities);
        let mut target_peer = None;
        for first in (0..identities).step_by(WAVE) {
            let mut started = Vec::new();
            for _ in first..identities.min(first + WAVE) {
                started.push(Identity::start(&addr, dials)?);
            }
            for (identity, mut settled) in started {
                let peer = tokio::time::timeout(within, async {
                    loop {
                        if let Some(result) = settled.borrow_and_update().clone() {
                            return result;
                        }
                        if settled.changed().await.is_err() {
                            return Err("the rogue's swarm stopped".to_owned());
                        }
                    }
                })
                .await
                .context("the rogue's dials were not answered in time")?;
                match peer {
                    Ok(Some(p)) => target_peer = Some(p),
                    Ok(None) => {}
                    Err(e) => bail!("rogue identity: {e}"),
                }
                held.push(identity);
            }
        }
        Ok(Rogue {
            identities: held,
            target: target_peer.context("no rogue connection was admitted")?,
        })
    }

    /// Connections the node admitted and still holds, per identity.
    pub fn connections(&self) -> Vec<usize> {
        self.identities
            .iter()
            .map(|i| i.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Announces the keys `keys` (numbers for [`flood_key`]), spread over the identities that
    /// hold a connection, each on one stream, and returns once the node has read every
    /// message: each stream ends with a `FIND_NODE` whose answer comes after the node took the
    /// announcements before it.
    pub async fn publish(&self, keys: std::ops::Range<u64>) -> Result<()> {
        let holders: Vec<&Identity> = self
            .identities
            .iter()
            .filter(|i| i.connections.load(Ordering::Relaxed) > 0)
            .collect();
        ensure!(!holders.is_empty(), "no rogue identity holds a connection");
        let total = keys.end - keys.start;
        let each = total.div_ceil(holders.len() as u64);
        let mut tasks = Vec::new();
        for (n, identity) in holders.iter().enumerate() {
            let from = keys.start + n as u64 * each;
            let to = (from + each).min(keys.end);
            if from >= to {
                break;
            }
            let mut control = identity.control.clone();
            let me = identity.keypair.public().to_peer_id();
            let target = self.target;
            tasks.push(tokio::spawn(async move {
                // A connection the node refused after the handshake (over its bound per
                // peer) closes a moment later; a stream opened on it is cancelled: the next
                // attempt takes another connection.
                let mut attempts = 0;
                let mut stream = loop {
                    let protocol = StreamProtocol::new(speil_p2p::KAD_PROTOCOL);
                    match control.open_stream(target, protocol).await {
                        Ok(s) => break s,
                        Err(_) if attempts < 5 => {
                            attempts += 1;
                            pause_before_retry(attempts).await;
                        }
                        Err(e) => bail!("opening a kad stream: {e}"),
                    }
                };
                let mut batch = Vec::new();
                for k in from..to {
                    add_provider(&mut batch, &flood_key(k), &me);
                    if (k - from) as usize % BATCH == BATCH - 1 {
                        stream.write_all(&batch).await?;
                        batch.clear();
                    }
                }
                find_node(&mut batch, &me);
                stream.write_all(&batch).await?;
                stream.flush().await?;
                // The answer to FIND_NODE: a length, then that many bytes.
                let len = read_varint(&mut stream).await?;
                let mut answer = vec![0u8; len];
                stream.read_exact(&mut answer).await?;
                ensure!(
                    answer.first() == Some(&0x08) && answer.get(1) == Some(&FIND_NODE),
                    "the answer is not FIND_NODE's: {answer:?}"
                );
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}

impl Identity {
    /// A swarm of one new identity dialling `addr` `dials` times. The watch turns `Some`
    /// once every dial is settled: `Ok(Some(peer))` when at least one connected.
    #[allow(clippy::type_complexity)]
    fn start(addr: &Multiaddr, dials: usize) -> Result<(Identity, watch::Receiver<Settled>)> {
        let keypair = Keypair::generate_ed25519();
        let rt = Tokio;
        let transport = speil_p2p::transport::upgrade(TcpTransport::new(rt), &keypair, None)?;
        let behaviour = libp2p_stream::Behaviour::new();
        let control = behaviour.new_control();
        let mut swarm = Swarm::new(
            transport,
            behaviour,
            keypair.public().to_peer_id(),
            libp2p::swarm::Config::with_executor(RuntimeExecutor(rt))
                .with_idle_connection_timeout(Duration::from_secs(600)),
        );
        for _ in 0..dials {
            swarm.dial(DialOpts::unknown_peer_id().address(addr.clone()).build())?;
        }
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = watch::channel(None);
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut settled = 0;
            let mut peer = None;
            loop {
                let event = swarm.select_next_some().await;
                match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        count.fetch_add(1, Ordering::Relaxed);
                        peer = Some(peer_id);
                        settled += 1;
                    }
                    SwarmEvent::OutgoingConnectionError { .. } => settled += 1,
                    SwarmEvent::ConnectionClosed { .. } => {
                        count.fetch_sub(1, Ordering::Relaxed);
                        // A connection the node closed right after the handshake (over
                        // its bound) counts as a refused dial.
                    }
                    _ => continue,
                }
                if settled == dials {
                    tx.send_replace(Some(Ok(peer)));
                }
            }
        });
        Ok((
            Identity {
                keypair,
                control,
                connections,
                task,
            },
            rx,
        ))
    }
}

/// A short pause before the next attempt to open a stream.
async fn pause_before_retry(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends one length-prefixed `ADD_PROVIDER` of `key` by `me`.
fn add_provider(out: &mut Vec<u8>, key: &[u8], me: &PeerId) {
    let mut peer = Vec::new();
    bytes_field(&mut peer, 1, &me.to_bytes());
    for i in 0..ADDRESSES_PER_RECORD {
        let a: Multiaddr = format!("/ip4/127.0.9.{}/tcp/{}", i + 1, 4000 + i)
            .parse()
            .expect("a valid address");
        bytes_field(&mut peer, 2, &a.to_vec());
    }
    let mut msg = vec![0x08, ADD_PROVIDER];
    bytes_field(&mut msg, 2, key);
    bytes_field(&mut msg, 9, &peer);
    varint(out, msg.len());
    out.extend_from_slice(&msg);
}

/// Appends one length-prefixed `FIND_NODE` of `me`.
fn find_node(out: &mut Vec<u8>, me: &PeerId) {
    let mut msg = vec![0x08, FIND_NODE];
    bytes_field(&mut msg, 2, &me.to_bytes());
    varint(out, msg.len());
    out.extend_from_slice(&msg);
}

async fn read_varint(stream: &mut libp2p::Stream) -> Result<usize> {
    let mut n = 0usize;
    for shift in (0..35).step_by(7) {
        let mut b = [0u8];
        stream.read_exact(&mut b).await?;
        n |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(n);
        }
    }
    bail!("a length prefix of more than 5 bytes")
}
