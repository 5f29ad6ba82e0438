//! Reserving loopback addresses so that tests running at the same time never collide.
//!
//! Block `b` owns `127.0.b.11` and up. A block is held through an exclusive lock on
//! `$TMPDIR/speil-tests-blocks/<b>.lock`, released when the [`AddressBlock`] is dropped (or
//! the process dies), so parallel tests in one process and parallel test processes get
//! distinct blocks.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

/// The first host part of node addresses in a block (`127.0.b.11`).
pub const FIRST_NODE_HOST: u8 = 11;

/// A reserved block of loopback addresses.
#[derive(Debug)]
pub struct AddressBlock {
    index: u8,
    _lock: File,
}

impl AddressBlock {
    /// Reserves a free block.
    pub fn acquire() -> Result<AddressBlock> {
        let dir = std::env::temp_dir().join("speil-tests-blocks");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let start = (std::process::id() % 255) as u8;
        for i in 0..=254u16 {
            let index = ((u16::from(start) + i) % 255) as u8;
            let path = dir.join(format!("{index}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            if file.try_lock().is_ok() {
                return Ok(AddressBlock { index, _lock: file });
            }
        }
        bail!("all 255 loopback address blocks are in use")
    }

    /// The block's number (the third octet).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The address of node `i`: `127.0.<block>.<11 + i>`.
    pub fn node_address(&self, i: usize) -> Result<Ipv4Addr> {
        let host = u8::try_from(i)
            .ok()
            .and_then(|i| FIRST_NODE_HOST.checked_add(i))
            .filter(|h| *h < 255)
            .with_context(|| format!("node index {i} does not fit in an address block"))?;
        Ok(Ipv4Addr::new(127, 0, self.index, host))
    }
}
