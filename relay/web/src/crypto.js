// Share-link cryptography in the browser: the same format as crypto/src/link.rs
// (read its module docs), with @noble/ciphers and @noble/hashes, no hand-written
// primitives. The known-answer vector in crypto/tests/link_kat.txt is checked against
// this file by tests/browser (in Node and in Chromium) and by the Rust unit test.
import { blake3 } from '@noble/hashes/blake3.js';
import { scryptAsync } from '@noble/hashes/scrypt.js';
import { chacha20poly1305, xchacha20poly1305 } from '@noble/ciphers/chacha.js';

const enc = new TextEncoder();
const RECORD_CONTEXT = 'weft 2026-11 share link record key v1';
const ACCESS_CONTEXT = 'weft 2026-11 share link access token v1';
export const SCRYPT = { N: 1 << 14, r: 8, p: 1, dkLen: 32 };

export function b64urlEncode(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function b64urlDecode(s) {
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) throw new Error('not base64url');
  const pad = s.length % 4 === 0 ? '' : '='.repeat(4 - (s.length % 4));
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + pad);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function unhex(s) {
  if (!/^([0-9a-f]{2})*$/.test(s)) throw new Error('not hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

// Derives { recordKey, access } from the fragment key, the token and an optional password.
export async function deriveSecrets(key, token, password) {
  let ikm = key;
  if (password !== null && password !== undefined) {
    const pw = await scryptAsync(enc.encode(password), concat(enc.encode('weft-link-v1'), token), SCRYPT);
    ikm = concat(key, pw);
  }
  return {
    recordKey: blake3(ikm, { context: enc.encode(RECORD_CONTEXT) }),
    access: blake3(ikm, { context: enc.encode(ACCESS_CONTEXT) }),
  };
}

function recordAad(token) {
  return concat(enc.encode('weft-link-record-v1'), token);
}

export function sealRecord(recordKey, token, plaintext, nonce) {
  return concat(nonce, xchacha20poly1305(recordKey, nonce, recordAad(token)).encrypt(plaintext));
}

// Opens a sealed record; throws on any tampering or a wrong key/password.
export function openRecord(recordKey, token, sealed) {
  if (sealed.length < 40) throw new Error('record too short');
  return xchacha20poly1305(recordKey, sealed.subarray(0, 24), recordAad(token)).decrypt(sealed.subarray(24));
}

// Checks a chunk's ciphertext against its id (BLAKE3), then opens it (zero nonce) and
// checks its length. Throws on any mismatch.
export function openChunk(chunk, ciphertext) {
  if (!equal(blake3(ciphertext), unhex(chunk.id))) throw new Error('chunk does not match its id');
  const pt = chacha20poly1305(unhex(chunk.key), new Uint8Array(12)).decrypt(ciphertext);
  if (pt.length !== chunk.len) throw new Error('chunk has the wrong length');
  return pt;
}

// Checks a decoded record the way LinkRecord::from_json does.
export function checkRecord(r) {
  if (!r || r.v !== 1 || !Array.isArray(r.files) || typeof r.name !== 'string') throw new Error('bad record');
  if (r.kind !== 'file' && r.kind !== 'folder') throw new Error('bad record kind');
  if (r.kind === 'file' && r.files.length !== 1) throw new Error('bad file record');
  const seen = new Set();
  for (const f of r.files) {
    if (typeof f.path !== 'string' || f.path === '' || f.path.startsWith('/') || /[\\\0]/.test(f.path) ||
        f.path.split('/').some((c) => c === '' || c === '.' || c === '..')) throw new Error('unsafe path');
    if (seen.has(f.path)) throw new Error('path twice');
    seen.add(f.path);
    let total = 0;
    for (const c of f.chunks) {
      if (!/^[0-9a-f]{64}$/.test(c.id) || !/^[0-9a-f]{64}$/.test(c.key) || !Number.isInteger(c.len)) throw new Error('bad chunk');
      total += c.len;
    }
    if (total !== f.size) throw new Error('sizes do not add up');
  }
  return r;
}
