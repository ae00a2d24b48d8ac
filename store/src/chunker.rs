//! Content-defined chunking (FastCDC 2020) with weft's parameters.
//!
//! Small chunks keep edits cheap on the wire: a 10-byte insertion changes one or two
//! chunks of ~64 KiB instead of a megabyte. A file larger than [`LARGE_FILE`] is cut
//! into chunks sixteen times larger ([`LARGE`]): at 64 KiB its chunk list would outgrow
//! what one manifest may hold ([`crate::log::MAX_MANIFEST_CHUNKS`], about 6.7 GiB of
//! file), and at 1 MiB the same list covers about 100 GiB. An edit of such a file costs
//! a megabyte or two on the wire instead of ~130 KiB; a file that grows past the limit
//! is cut anew once (its chunks all change). The cutter reads a file in large blocks
//! and runs FastCDC over each block, carrying the unfinished tail into the next one,
//! so memory stays at one block whatever the file size and the cut points are exactly
//! those of a single pass over the whole file.
use std::io::Read;

/// FastCDC's three sizes for one kind of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Smallest chunk (except a file's last, or a file smaller than this).
    pub min: usize,
    /// Average chunk size FastCDC aims for.
    pub avg: usize,
    /// Largest chunk.
    pub max: usize,
}

/// How every file up to [`LARGE_FILE`] bytes is cut (design.md's suggestion).
pub const SMALL: Params = Params {
    min: 16 << 10,
    avg: 64 << 10,
    max: 256 << 10,
};
/// How a file larger than [`LARGE_FILE`] is cut.
pub const LARGE: Params = Params {
    min: 256 << 10,
    avg: 1 << 20,
    max: 4 << 20,
};
/// Files larger than this are cut with [`LARGE`]: 65,536 chunks at [`SMALL`]'s
/// average, well under what a manifest holds.
pub const LARGE_FILE: u64 = 4 << 30;
/// Smallest chunk of an ordinary file.
pub const MIN_CHUNK: usize = SMALL.min;
/// Largest chunk of any file: the bound every buffer, frame and stored blob that
/// holds one chunk is sized by.
pub const MAX_CHUNK: usize = LARGE.max;
/// How much of a file is read at a time.
const BLOCK: usize = 4 << 20;

/// The parameters a file of `size` bytes is cut with.
pub fn params_for(size: u64) -> Params {
    if size > LARGE_FILE { LARGE } else { SMALL }
}

/// Cuts everything `r` yields into chunks, calling `f` with each chunk's bytes in order.
/// Returns the number of bytes read.
pub fn cut<R: Read, E: From<std::io::Error>>(
    p: Params,
    r: R,
    f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    cut_with(&mut Buffer::new(), p, r, f)
}

/// The block buffer [`cut_with`] reuses: allocate one per thread, not one per file
/// (zeroing 4 MiB for each of ten thousand small files costs more than reading them).
pub struct Buffer(Vec<u8>);

impl Buffer {
    /// A buffer of one block plus one maximal chunk of [`SMALL`] (it grows the first
    /// time a file is cut with larger chunks).
    pub fn new() -> Buffer {
        Buffer(vec![0u8; BLOCK + SMALL.max])
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

/// [`cut`] with a caller-provided buffer.
pub fn cut_with<R: Read, E: From<std::io::Error>>(
    buffer: &mut Buffer,
    p: Params,
    mut r: R,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let buf = &mut buffer.0;
    // Room for a block after the unfinished tail, which is shorter than one chunk.
    if buf.len() < BLOCK + p.max {
        buf.resize(BLOCK + p.max, 0);
    }
    let mut len = 0usize;
    let mut total = 0u64;
    let mut eof = false;
    loop {
        while !eof && len < buf.len() {
            match r.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    len += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if len == 0 {
            return Ok(total);
        }
        let mut consumed = 0usize;
        for c in fastcdc::v2020::FastCDC::new(&buf[..len], p.min, p.avg, p.max) {
            let end = c.offset + c.length;
            if end == len && !eof {
                break; // unfinished: its cut point may lie beyond this block
            }
            f(&buf[c.offset..end])?;
            consumed = end;
        }
        buf.copy_within(consumed..len, 0);
        len -= consumed;
        if eof && len == 0 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` seeded pseudo-random bytes (xorshift), for tests across the crate.
    pub(crate) fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn block_cutting_matches_one_pass() {
        for (p, n) in [(SMALL, 11 << 20), (LARGE, 41 << 20)] {
            let d = data(n, 7);
            let mut got = Vec::new();
            cut::<_, std::io::Error>(p, &d[..], |c| {
                got.push(c.len());
                Ok(())
            })
            .unwrap();
            let want: Vec<usize> = fastcdc::v2020::FastCDC::new(&d, p.min, p.avg, p.max)
                .map(|c| c.length)
                .collect();
            assert_eq!(got, want);
            assert_eq!(got.iter().sum::<usize>(), d.len());
            assert!(got.iter().all(|l| *l <= p.max));
        }
    }

    #[test]
    fn a_file_over_the_limit_is_cut_into_chunks_a_manifest_can_list() {
        assert_eq!(params_for(LARGE_FILE), SMALL);
        assert_eq!(params_for(LARGE_FILE + 1), LARGE);
        // The largest file the smaller chunks cut, at their smallest possible average
        // (the minimum), still fits a manifest when the average is met; the larger
        // ones cover ~100 GiB (97.7) at their average.
        let listed = crate::log::MAX_MANIFEST_CHUNKS as u64;
        assert!(LARGE_FILE / SMALL.avg as u64 <= listed * 2 / 3);
        assert!(listed * LARGE.avg as u64 >= 95 << 30);
        // A chunk of every size fits the buffers sized by MAX_CHUNK.
        assert_eq!(MAX_CHUNK, LARGE.max.max(SMALL.max));
    }

    #[test]
    fn small_and_empty_inputs() {
        let mut n = 0;
        cut::<_, std::io::Error>(SMALL, &[][..], |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 0);
        let d = data(1000, 3);
        let mut got = Vec::new();
        cut::<_, std::io::Error>(SMALL, &d[..], |c| {
            got.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![d]);
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let d = data(8 << 20, 9);
        let mut e = vec![1u8; 10];
        e.extend_from_slice(&d);
        let set = |v: &[u8]| {
            let mut s = std::collections::HashSet::new();
            cut::<_, std::io::Error>(SMALL, v, |c| {
                s.insert(blake3::hash(c));
                Ok(())
            })
            .unwrap();
            s
        };
        let a = set(&d);
        let b = set(&e);
        assert!(
            b.difference(&a).count() <= 2,
            "an insertion at 0 re-chunks at most two chunks"
        );
    }
}
