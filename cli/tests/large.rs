//! A file over 4 GiB (a disk image, a video archive) is cut into larger chunks, so its
//! chunk list stays within what one manifest may hold, and an edit of it still costs
//! a few chunks. The file is sparse (holes read as zeros), so the test needs a few MiB
//! of disk, not gigabytes.
mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

/// weft's limit for the small chunks (`weft_store::chunker::LARGE_FILE`).
const LARGE_FILE: u64 = 4 << 30;
const SIZE: u64 = LARGE_FILE + (8 << 20);
const HEAD: usize = 8 << 20;

#[test]
fn a_file_over_4_gib_is_recorded_in_large_chunks_and_an_edit_of_it_stays_small() {
    let env = Env::new();
    let path = env.path("disk.img");
    {
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(SIZE).expect("sparse length");
        f.write_all_at(&random_bytes(1, HEAD), 0).expect("head");
        f.write_all_at(&random_bytes(2, HEAD), SIZE - HEAD as u64)
            .expect("tail");
        // Written long ago: a file at rest is read once.
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .expect("mtime");
    }
    let s = env.init_and_add();
    assert!(warnings(&s).is_empty(), "{s}");
    assert_eq!(n(&s, "files_added"), 1, "{s}");
    let h = env.history("disk.img");
    assert_eq!(h.len(), 1);
    assert_eq!(n(&h[0], "size"), SIZE);
    // 16 MiB of random bytes at ~1 MiB a chunk, and 4 GiB of zeros cut at the
    // largest size, 4 MiB: about a thousand chunks. The small chunks (64 KiB on
    // average, 256 KiB at most) would need more than sixteen thousand.
    let chunks = n(&h[0], "chunks");
    assert!((1024..1100).contains(&chunks), "{chunks} chunks");

    // Ten bytes changed at the start: one or two chunks of ~1 MiB change, and the
    // log entry lists only those (a delta against the version before).
    let f = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(b"0123456789", 0).expect("edit");
    f.set_modified(SystemTime::now() - Duration::from_secs(1800))
        .expect("mtime");
    drop(f);
    let s = env.scan();
    assert_eq!(n(&s, "files_changed"), 1, "{s}");
    assert!(n(&s, "new_chunks") <= 2, "{s}");
    assert!(n(&s, "new_chunk_bytes") <= 2 * (4 << 20) + 32, "{s}");
    assert!(n(&s, "log_bytes") < 4096, "{s}");
    let h = env.history("disk.img");
    assert_eq!(h.len(), 2);
    assert_eq!(n(&h[1], "size"), SIZE);
    env.verify_ok();
}
