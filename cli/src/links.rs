//! `weft link` (create, list, revoke share links through the running node) and
//! `weft get URL` (open a share link here, decrypting locally: a relay that serves a
//! hostile page cannot fool it, since nothing of the relay's runs).
//!
//! `weft get` fetches the sealed record and every chunk with the access token, checks
//! each chunk against its id and opens it with its key, and writes the result into a
//! staging directory next to `--out`; only when every file verified is it renamed into
//! place. Tampered data, a wrong password or an unusable link is an error, exit 1,
//! and nothing is written.
use anyhow::{Context, Result, bail};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_crypto::link::{
    LinkKey, LinkKind, LinkRecord, LinkSecrets, LinkToken, MAX_RECORD_LEN, check_rel_path,
};

/// Reads a password: prompted without echo on a terminal, else one line of stdin.
pub fn read_password(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        // Echo off through stty (no unsafe termios code here); restored below.
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    let r = stdin.lock().take(4096).read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    r.context("reading the password")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

/// Parses `7d`, `12h`, `30m`, `45s` (or plain seconds) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 7d, 12h, 30m or 45s"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration"))
}

/// A parsed share link URL.
struct LinkUrl {
    /// `scheme://host[:port]` (and any path prefix before `/s/`).
    base: String,
    token: LinkToken,
    key: LinkKey,
}

fn parse_url(url: &str) -> Result<LinkUrl> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("not a share link: it should start with https:// or http://");
    }
    let (rest, key) = url
        .split_once('#')
        .context("the link has no key (the part after '#'): copy the whole link")?;
    let (base, token) = rest
        .rsplit_once("/s/")
        .context("not a share link: no /s/<token> in it")?;
    let token = LinkToken::decode(token.trim_end_matches('/'))
        .map_err(|e| anyhow::anyhow!("not a share link token: {e}"))?;
    let key = LinkKey::decode(key).map_err(|e| anyhow::anyhow!("not a share link key: {e}"))?;
    Ok(LinkUrl {
        base: base.to_string(),
        token,
        key,
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// GETs `url` with the access token; the body (at most `limit` bytes) on 200, the
/// relay's reason otherwise.
fn fetch(agent: &ureq::Agent, url: &str, access: &str, limit: u64, pw: bool) -> Result<Vec<u8>> {
    let mut resp = agent
        .get(url)
        .header("X-Weft-Access", access)
        .call()
        .with_context(|| format!("cannot reach the relay at {url}"))?;
    let status = resp.status().as_u16();
    // An error page is small; a body is at most what it may be.
    let body = resp
        .body_mut()
        .with_config()
        .limit(if status == 200 { limit } else { 64 << 10 })
        .read_to_vec()
        .context("reading the relay's answer")?;
    if status == 200 {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body);
    let kind = text
        .split_once("data-error=\"")
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(k, _)| k)
        .unwrap_or("");
    match (status, kind) {
        (403, _) if !pw => bail!("this link needs a password: run again with --password"),
        (403, _) => bail!("wrong password (HTTP 403)"),
        (410, "expired") => bail!("this link has expired (HTTP 410)"),
        (410, "revoked") => bail!("this link was revoked (HTTP 410)"),
        (410, "limit") => bail!("this link has reached its download limit (HTTP 410)"),
        (404, _) => bail!("no such link or chunk at the relay (HTTP 404)"),
        _ => bail!("the relay answered HTTP {status}"),
    }
}

/// What `weft get` wrote.
#[derive(serde::Serialize)]
pub struct Got {
    /// `file` or `folder`.
    pub kind: &'static str,
    /// Where it was written.
    pub path: String,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// `weft get URL`.
pub fn get(url: &str, out: Option<PathBuf>, password: Option<String>) -> Result<Got> {
    let link = parse_url(url)?;
    let secrets = LinkSecrets::derive(&link.key, &link.token, password.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let access = secrets.access_header();
    let agent = agent();
    let prefix = format!("{}/s/{}", link.base, link.token.encode());
    let sealed = fetch(
        &agent,
        &format!("{prefix}/record"),
        &access,
        MAX_RECORD_LEN as u64 + 1,
        password.is_some(),
    )?;
    let plain = secrets.open(&link.token, &sealed).map_err(|_| {
        anyhow::anyhow!(
            "the link's record does not verify: the relay served tampered data (or the key in the link is wrong); nothing was written"
        )
    })?;
    let record = LinkRecord::from_json(&plain)
        .map_err(|e| anyhow::anyhow!("the link's record is malformed: {e}; nothing was written"))?;
    // Where it goes: --out, or the shared name (its last component, made safe) here.
    let safe_name = record
        .name
        .rsplit('/')
        .next()
        .filter(|n| check_rel_path(n).is_ok())
        .unwrap_or("shared")
        .to_string();
    let dest = match out {
        // A file link into an existing directory lands there under its name.
        Some(o) if record.kind == LinkKind::File && o.is_dir() => o.join(&safe_name),
        Some(o) => o,
        None => PathBuf::from(&safe_name),
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if record.kind == LinkKind::Folder && dest.exists() {
        bail!(
            "{} exists: give --out a path that does not exist yet for a folder link",
            dest.display()
        );
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(
        ".weft-get-{}",
        weft_crypto::link::b64_encode(&weft_crypto::random_bytes::<9>())
    ));
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let r = download(&agent, &prefix, &access, &record, &staging);
    let done = r.and_then(|bytes| {
        let target = match record.kind {
            LinkKind::File => {
                let f = &record.files[0];
                let from = staging.join(&f.path);
                std::fs::rename(&from, &dest)
                    .with_context(|| format!("moving the file to {}", dest.display()))?;
                dest.clone()
            }
            LinkKind::Folder => {
                std::fs::rename(&staging, &dest)
                    .with_context(|| format!("moving the folder to {}", dest.display()))?;
                dest.clone()
            }
        };
        Ok(Got {
            kind: match record.kind {
                LinkKind::File => "file",
                LinkKind::Folder => "folder",
            },
            path: target.display().to_string(),
            files: record.files.len(),
            bytes,
        })
    });
    let _ = std::fs::remove_dir_all(&staging);
    done
}

/// Fetches, verifies and writes every file of `record` under `staging`.
fn download(
    agent: &ureq::Agent,
    prefix: &str,
    access: &str,
    record: &LinkRecord,
    staging: &Path,
) -> Result<u64> {
    let mut total = 0u64;
    for f in &record.files {
        // Paths were checked by from_json: relative, no `.`/`..`/empty components.
        let path = staging.join(&f.path);
        if !path.starts_with(staging) {
            bail!("unsafe path {:?} in the link", f.path);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        for c in &f.chunks {
            let ct = fetch(
                agent,
                &format!("{prefix}/c/{}", c.id),
                access,
                u64::from(c.len) + 17,
                true,
            )?;
            let pt = c.open(&ct).map_err(|_| {
                anyhow::anyhow!(
                    "a chunk of {:?} does not verify: the relay served tampered data; nothing was written",
                    f.path
                )
            })?;
            file.write_all(&pt)
                .with_context(|| format!("writing {}", path.display()))?;
            total += pt.len() as u64;
        }
        file.sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("2s"), Ok(2));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn urls() {
        let t = LinkToken([1; 16]);
        let k = LinkKey([2; 32]);
        let u = parse_url(&format!(
            "http://127.0.0.1:8080/s/{}#{}",
            t.encode(),
            k.encode()
        ))
        .unwrap();
        assert_eq!(u.base, "http://127.0.0.1:8080");
        assert_eq!(u.token, t);
        assert_eq!(u.key, k);
        assert!(parse_url(&format!("http://h/s/{}", t.encode())).is_err());
        assert!(parse_url("ftp://h/s/x#y").is_err());
    }
}
