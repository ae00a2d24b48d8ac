//! Content-defined chunking (FastCDC 2020) with weft's parameters.
//!
//! Small chunks keep edits cheap on the wire: a 10-byte insertion changes one or two
//! chunks of ~64 KiB instead of a megabyte. The cutter reads a file in large blocks
//! and runs FastCDC over each block, carrying the unfinished tail into the next one,
//! so memory stays at one block whatever the file size and the cut points are exactly
//! those of a single pass over the whole file.
use std::io::Read;

/// Smallest chunk (except a file's last, or a file smaller than this).
pub const MIN_CHUNK: usize = 16 * 1024;
/// Average chunk size FastCDC aims for.
pub const AVG_CHUNK: usize = 64 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: usize = 256 * 1024;
/// How much of a file is read at a time.
const BLOCK: usize = 4 << 20;

/// Cuts everything `r` yields into chunks, calling `f` with each chunk's bytes in order.
/// Returns the number of bytes read.
pub fn cut<R: Read, E: From<std::io::Error>>(
    r: R,
    f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    cut_with(&mut Buffer::new(), r, f)
}

/// The block buffer [`cut_with`] reuses: allocate one per thread, not one per file
/// (zeroing 4 MiB for each of ten thousand small files costs more than reading them).
pub struct Buffer(Vec<u8>);

impl Buffer {
    /// A buffer of one block plus one maximal chunk.
    pub fn new() -> Buffer {
        Buffer(vec![0u8; BLOCK + MAX_CHUNK])
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
    mut r: R,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let buf = &mut buffer.0;
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
        for c in fastcdc::v2020::FastCDC::new(&buf[..len], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
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
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
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
        let d = data(11 << 20, 7);
        let mut got = Vec::new();
        cut::<_, std::io::Error>(&d[..], |c| {
            got.push(c.len());
            Ok(())
        })
        .unwrap();
        let want: Vec<usize> = fastcdc::v2020::FastCDC::new(&d, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| c.length)
            .collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().sum::<usize>(), d.len());
    }

    #[test]
    fn small_and_empty_inputs() {
        let mut n = 0;
        cut::<_, std::io::Error>(&[][..], |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 0);
        let d = data(1000, 3);
        let mut got = Vec::new();
        cut::<_, std::io::Error>(&d[..], |c| {
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
            cut::<_, std::io::Error>(v, |c| {
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
