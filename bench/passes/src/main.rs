//! `weft-bench-passes`: the single-core compute ceiling of a weft scan.
//!
//! Every byte a scan indexes goes through four passes (design.md, "Folders, chunks and
//! keys"; `weft_crypto::SealedChunk::seal`):
//!
//! - (a) `cdc`: FastCDC 2020 with min 16 KiB / avg 64 KiB / max 256 KiB (a file smaller
//!   than the minimum is one chunk);
//! - (b) `keyed_blake3`: the chunk key, BLAKE3 keyed by the convergence secret over the
//!   plaintext chunk;
//! - (c) `seal`: ChaCha20-Poly1305 under that key (`weft_crypto::ChunkKey::seal`, which
//!   allocates the ciphertext, as a scan does);
//! - (d) `id_blake3`: the chunk id, BLAKE3 of the ciphertext.
//!
//! The tool reads the files under the given paths into memory (read time excluded and
//! reported separately; at most `--cap` bytes at a time, larger inputs go in batches),
//! warms every pass up once, then times each pass separately over the same bytes, on one
//! thread, `--runs` times, and reports the fastest run (the one least disturbed by other
//! work on the machine, so the ceiling errs high) and the median. Every result goes through
//! `std::hint::black_box`. It also times the fused per-chunk pipeline (CDC, then
//! `SealedChunk::seal` per chunk) as a cross-check of the sum of the parts.
//!
//! With `--floors` (for many small files), then, on two threads, the floors a real scan cannot go below: each file opened and
//! read(2) into a buffer the thread reuses (read alone; read + the fused passes; read +
//! passes + every ciphertext appended to a file, as a cache would). They show how much of
//! the ceiling is left, on this machine, for what a scan does besides the four passes.
//!
//! All rates are plaintext bytes per second, GB = 10^9 bytes. The combined single-core
//! rate is 1 / Σ(1 / rate_i); the two-core ceiling is twice that. The ceiling counts
//! compute only: reading files, the index database and the change log come on top.
//!
//! Usage: `weft-bench-passes [--runs N] [--cap-mib N] [--label TEXT] PATH...`
//! Prints one JSON object on stdout and a short summary on stderr.
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use fastcdc::v2020::FastCDC;
use serde_json::json;
use weft_crypto::{ChunkId, ChunkKey, SealedChunk};

const MIN: usize = 16 * 1024;
const AVG: usize = 64 * 1024;
const MAX: usize = 256 * 1024;
/// A fixed convergence secret: the key does not change the cost.
const SECRET: [u8; 32] = *b"weft-bench convergence secret 32";
/// Bytes each pass is warmed up over before timing.
const WARMUP_BYTES: usize = 64 << 20;

const PASSES: [&str; 4] = ["cdc", "keyed_blake3", "seal", "id_blake3"];

struct Args {
    paths: Vec<PathBuf>,
    runs: usize,
    cap: u64,
    label: Option<String>,
    floors: bool,
}

fn usage() -> String {
    "usage: weft-bench-passes [--runs N (3)] [--cap-mib N (1024)] [--label TEXT] [--floors] PATH..."
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        paths: Vec::new(),
        runs: 3,
        cap: 1024 << 20,
        label: None,
        floors: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(usage)?
            }
            "--cap-mib" => {
                let mib: u64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(usage)?;
                args.cap = mib << 20;
            }
            "--label" => args.label = Some(it.next().ok_or_else(usage)?),
            "--floors" => args.floors = true,
            "-h" | "--help" => return Err(usage()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{}", usage())),
            _ => args.paths.push(PathBuf::from(a)),
        }
    }
    if args.paths.is_empty() {
        return Err(usage());
    }
    Ok(args)
}

/// Regular files under `p`, sorted, symlinks skipped.
fn walk(p: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    if md.is_file() {
        out.push((p.to_path_buf(), md.len()));
    } else if md.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
    }
    Ok(())
}

/// Pass (a): chunk boundaries of every file, as slices into the files.
fn cdc<'a>(files: &'a [Vec<u8>], chunks: &mut Vec<&'a [u8]>) {
    chunks.clear();
    for data in files {
        if data.is_empty() {
            continue;
        }
        if data.len() < MIN {
            chunks.push(data);
            continue;
        }
        for c in FastCDC::new(data, MIN, AVG, MAX) {
            chunks.push(&data[c.offset..c.offset + c.length]);
        }
    }
}

/// Pass (b): convergent chunk keys.
fn keyed(chunks: &[&[u8]], keys: &mut Vec<[u8; 32]>) {
    keys.clear();
    for c in chunks {
        keys.push(*blake3::keyed_hash(&SECRET, c).as_bytes());
    }
}

/// Pass (c): sealing, each ciphertext dropped after use (as a scan does once it has
/// stored or hashed it).
fn seal(chunks: &[&[u8]], keys: &[[u8; 32]]) -> usize {
    let mut n = 0;
    for (c, k) in chunks.iter().zip(keys) {
        let ct = ChunkKey(*k).seal(c);
        n += black_box(&ct).len();
    }
    n
}

/// Pass (d): chunk ids over stored ciphertexts.
fn ids(cts: &[Vec<u8>], out: &mut Vec<[u8; 32]>) {
    out.clear();
    for ct in cts {
        out.push(*blake3::hash(ct).as_bytes());
    }
}

/// The fused pipeline a scan runs: CDC, then `SealedChunk::seal` per chunk.
fn fused(files: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for data in files {
        if data.is_empty() {
            continue;
        }
        if data.len() < MIN {
            n += black_box(SealedChunk::seal(&SECRET, data)).ciphertext.len();
            continue;
        }
        for c in FastCDC::new(data, MIN, AVG, MAX) {
            let s = SealedChunk::seal(&SECRET, &data[c.offset..c.offset + c.length]);
            n += black_box(s).ciphertext.len();
        }
    }
    n
}

/// The most a reading thread holds of a file at once, as a scan's cutter does.
const PIECE: usize = 4 << 20;

/// What two threads reach when they also read the files (each file opened and read with
/// read(2) into a buffer the thread reuses, as a scan reads, in pieces of at most
/// [`PIECE`] bytes), with `work` run over each piece (files are spread over the threads
/// whole: meant for many small files, where no file outweighs the rest): the best any scan that reads through the page cache could do, before
/// its index, log and cache. Returns the fastest wall-clock seconds over `runs`.
fn two_threads_reading<F>(list: &[(PathBuf, u64)], runs: usize, work: F) -> Result<f64, String>
where
    F: Fn(usize, &[u8]) -> std::io::Result<()> + Sync,
{
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut best_s = f64::INFINITY;
    for _ in 0..runs {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = (0..2)
                .map(|thread| {
                    let (next, work) = (&next, &work);
                    s.spawn(move || -> Result<(), String> {
                        let mut buf = vec![0u8; PIECE];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((p, _)) = list.get(i) else {
                                return Ok(());
                            };
                            let mut one = || -> std::io::Result<()> {
                                let mut f = std::fs::File::open(p)?;
                                loop {
                                    let mut len = 0;
                                    while len < PIECE {
                                        match f.read(&mut buf[len..])? {
                                            0 => break,
                                            n => len += n,
                                        }
                                    }
                                    if len == 0 {
                                        return Ok(());
                                    }
                                    work(thread, &buf[..len])?;
                                    if len < PIECE {
                                        return Ok(());
                                    }
                                }
                            };
                            one().map_err(|e| format!("{}: {e}", p.display()))?;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| "a reading thread panicked".to_string())??;
            }
            Ok(())
        })?;
        best_s = best_s.min(t.elapsed().as_secs_f64());
    }
    Ok(best_s)
}

/// CDC and `SealedChunk::seal` over one file's bytes, each ciphertext handed to `out`.
fn fused_one(
    data: &[u8],
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if data.len() < MIN {
        return out(&black_box(SealedChunk::seal(&SECRET, data)).ciphertext);
    }
    for c in FastCDC::new(data, MIN, AVG, MAX) {
        out(&black_box(SealedChunk::seal(
            &SECRET,
            &data[c.offset..c.offset + c.length],
        ))
        .ciphertext)?;
    }
    Ok(())
}

/// The floors: reading alone, reading + the fused passes, and reading + the passes +
/// appending each ciphertext to a pack file (one per thread, in the system temp dir,
/// removed after), all on two threads, as rates in GB/s of plaintext.
fn floors(list: &[(PathBuf, u64)], bytes: u64, runs: usize) -> Result<serde_json::Value, String> {
    use std::io::Write;
    let gb = bytes as f64 / 1e9;
    let read = two_threads_reading(list, runs, |_, d| {
        black_box(d);
        Ok(())
    })?;
    let passes = two_threads_reading(list, runs, |_, d| {
        fused_one(d, |ct| {
            black_box(ct);
            Ok(())
        })
    })?;
    let dir = std::env::temp_dir().join(format!("weft-bench-passes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let packs: Vec<std::sync::Mutex<Option<std::fs::File>>> =
        (0..2).map(|_| std::sync::Mutex::new(None)).collect();
    let res = two_threads_reading(list, runs, |thread, d| {
        let mut slot = packs[thread]
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        if slot.is_none() {
            *slot = Some(std::fs::File::create(dir.join(format!("pack-{thread}")))?);
        }
        let Some(pack) = slot.as_mut() else {
            return Err(std::io::Error::other("no pack"));
        };
        fused_one(d, |ct| pack.write_all(ct))
    });
    drop(packs);
    let _ = std::fs::remove_dir_all(&dir);
    let pack = res?;
    Ok(json!({
        "what": "two threads, each file opened and read(2) into a reused buffer; fastest of the runs, wall clock",
        "read_gbps": gb / read,
        "read_passes_gbps": gb / passes,
        "read_passes_pack_gbps": gb / pack,
    }))
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Untimed check that the separate passes compute what `SealedChunk::seal` computes.
fn check(
    chunks: &[&[u8]],
    keys: &[[u8; 32]],
    cts: &[Vec<u8>],
    idv: &[[u8; 32]],
) -> Result<(), String> {
    for i in [0, chunks.len() / 2, chunks.len().saturating_sub(1)] {
        if i >= chunks.len() {
            continue;
        }
        let s = SealedChunk::seal(&SECRET, chunks[i]);
        if s.key.0 != keys[i]
            || s.ciphertext != cts[i]
            || s.id != ChunkId::of(&cts[i])
            || s.id.0.0 != idv[i]
        {
            return Err(format!(
                "pass output differs from SealedChunk::seal at chunk {i}"
            ));
        }
        // The same seal through chacha20poly1305 directly (all-zero nonce).
        let pt = ChaCha20Poly1305::new(&Key::from(keys[i]))
            .decrypt(&Nonce::default(), cts[i].as_slice())
            .map_err(|_| format!("direct ChaCha20-Poly1305 open failed at chunk {i}"))?;
        if pt != chunks[i] {
            return Err(format!("round trip differs at chunk {i}"));
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let mut list = Vec::new();
    for p in &args.paths {
        walk(p, &mut list).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let total: u64 = list.iter().map(|(_, l)| l).sum();
    if total == 0 {
        return Err("no bytes under the given paths".into());
    }
    // Batches of at most `cap` bytes (a single larger file is a batch of its own).
    let mut batches: Vec<Vec<(PathBuf, u64)>> = vec![Vec::new()];
    let mut in_batch = 0u64;
    for f in list.iter().cloned() {
        if in_batch > 0 && in_batch + f.1 > args.cap {
            batches.push(Vec::new());
            in_batch = 0;
        }
        in_batch += f.1;
        batches.last_mut().expect("non-empty").push(f);
    }

    let runs = args.runs;
    let mut secs = vec![vec![0f64; runs]; PASSES.len()];
    let mut fused_secs = vec![0f64; runs];
    let mut read_secs = 0f64;
    let mut bytes = 0u64;
    let mut n_chunks = 0usize;
    let mut warmed = false;

    for batch in &batches {
        let t = Instant::now();
        let files: Vec<Vec<u8>> = batch
            .iter()
            .map(|(p, _)| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
            .collect::<Result<_, _>>()?;
        read_secs += t.elapsed().as_secs_f64();
        let batch_bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
        bytes += batch_bytes;

        let cap_chunks = batch_bytes as usize / MIN + files.len() + 1;
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(cap_chunks);
        let mut keys: Vec<[u8; 32]> = Vec::with_capacity(cap_chunks);
        let mut idv: Vec<[u8; 32]> = Vec::with_capacity(cap_chunks);

        // Ciphertexts for pass (d), made untimed, once per batch.
        cdc(&files, &mut chunks);
        keyed(&chunks, &mut keys);
        let cts: Vec<Vec<u8>> = chunks
            .iter()
            .zip(&keys)
            .map(|(c, k)| ChunkKey(*k).seal(c))
            .collect();
        ids(&cts, &mut idv);
        check(&chunks, &keys, &cts, &idv)?;
        n_chunks += chunks.len();

        if !warmed {
            // One untimed pass of each kind over a prefix of the data.
            let mut acc = 0usize;
            let k = chunks
                .iter()
                .position(|c| {
                    acc += c.len();
                    acc >= WARMUP_BYTES
                })
                .map_or(chunks.len(), |i| i + 1);
            let f = files
                .iter()
                .scan(0usize, |a, f| {
                    let before = *a;
                    *a += f.len();
                    (before < WARMUP_BYTES).then_some(())
                })
                .count();
            let mut c2 = Vec::with_capacity(cap_chunks);
            cdc(&files[..f], &mut c2);
            black_box(&c2);
            let mut k2 = Vec::with_capacity(k);
            keyed(&chunks[..k], &mut k2);
            black_box(&k2);
            black_box(seal(&chunks[..k], &keys[..k]));
            let mut i2 = Vec::with_capacity(k);
            ids(&cts[..k], &mut i2);
            black_box(&i2);
            black_box(fused(&files[..f]));
            warmed = true;
        }

        for r in 0..runs {
            let t = Instant::now();
            cdc(black_box(&files), &mut chunks);
            black_box(&chunks);
            secs[0][r] += t.elapsed().as_secs_f64();

            let t = Instant::now();
            keyed(black_box(&chunks), &mut keys);
            black_box(&keys);
            secs[1][r] += t.elapsed().as_secs_f64();

            let t = Instant::now();
            black_box(seal(black_box(&chunks), black_box(&keys)));
            secs[2][r] += t.elapsed().as_secs_f64();

            let t = Instant::now();
            ids(black_box(&cts), &mut idv);
            black_box(&idv);
            secs[3][r] += t.elapsed().as_secs_f64();

            let t = Instant::now();
            black_box(fused(black_box(&files)));
            fused_secs[r] += t.elapsed().as_secs_f64();
        }
    }

    let gb = bytes as f64 / 1e9;
    let mut passes = serde_json::Map::new();
    let mut inv_sum = 0f64;
    let mut med_inv_sum = 0f64;
    let mut summary = Vec::new();
    for (i, name) in PASSES.iter().enumerate() {
        let s = best(&secs[i]);
        let rate = gb / s;
        inv_sum += 1.0 / rate;
        med_inv_sum += median(&secs[i]) / gb;
        summary.push(format!("{name} {rate:.2}"));
        passes.insert(
            (*name).to_string(),
            json!({
                "seconds": s,
                "gbps": rate,
                "median_gbps": gb / median(&secs[i]),
                "seconds_runs": secs[i],
            }),
        );
    }
    let combined = 1.0 / inv_sum;
    let fused_s = best(&fused_secs);
    let floors = if args.floors {
        floors(&list, bytes, runs)?
    } else {
        serde_json::Value::Null
    };
    let out = json!({
        "tool": "weft-bench-passes",
        "label": args.label,
        "paths": args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "files": list.len(),
        "bytes": bytes,
        "chunks": n_chunks,
        "mean_chunk_bytes": bytes as f64 / n_chunks.max(1) as f64,
        "cdc_params": {"min": MIN, "avg": AVG, "max": MAX, "algorithm": "fastcdc v2020, normalization level 1"},
        "batches": batches.len(),
        "runs": runs,
        "statistic": "fastest of the runs (median_* fields: median); GB = 1e9 plaintext bytes",
        "read_seconds_excluded": read_secs,
        "passes": passes,
        "combined_single_core_gbps": combined,
        "two_core_ceiling_gbps": 2.0 * combined,
        "two_core_ceiling_mbps": 2000.0 * combined,
        "median_combined_single_core_gbps": 1.0 / med_inv_sum,
        "fused_single_core": {
            "seconds": fused_s,
            "gbps": gb / fused_s,
            "median_gbps": gb / median(&fused_secs),
            "seconds_runs": fused_secs,
        },
        "two_thread_floors": floors,
        "cpu_model": cpu_model(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    let ceiling = 2.0 * combined;
    if args.floors {
        let of = |k: &str| floors[k].as_f64().unwrap_or(0.0) / ceiling * 100.0;
        eprintln!(
            "two threads that also read the files: read alone {:.0}%, read + passes {:.0}%, read + passes + pack write {:.0}% of the ceiling",
            of("read_gbps"),
            of("read_passes_gbps"),
            of("read_passes_pack_gbps")
        );
    }
    eprintln!(
        "{}: {} files, {:.1} MB, {} chunks; GB/s per pass: {}; combined {:.3}; two-core ceiling {:.3}; fused {:.3}",
        args.label.as_deref().unwrap_or("passes"),
        list.len(),
        bytes as f64 / 1e6,
        n_chunks,
        summary.join(", "),
        combined,
        2.0 * combined,
        gb / fused_s
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench-passes: {e}");
            ExitCode::FAILURE
        }
    }
}
