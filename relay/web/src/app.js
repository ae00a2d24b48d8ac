// The share-link page: decrypts and verifies in the browser, shows without saving.
//
// The key is the URL's fragment, which the browser never sends. The page derives the
// access token (and, with a password, mixes the password in: see crypto.js), fetches
// the sealed record and each chunk from this relay, checks every chunk against its id
// before opening it, and shows nothing of a file unless all of it verified.
//
// State for people and tests: #status (data-state = loading | password |
// wrong-password | expired | revoked | limit | unknown | tampered | missing | error | listing |
// shown), #listing (a folder's files), #content (the file shown: #text, #image, #pdf
// or #download).
import { deriveSecrets, openRecord, openChunk, checkRecord, b64urlDecode, b64urlEncode } from './crypto.js';

const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
  s.className = ['password', 'listing', 'shown', 'loading'].includes(state) ? '' : 'error';
}

function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

class Refused extends Error {
  constructor(state, text) { super(text); this.state = state; }
}

const MESSAGES = {
  expired: 'This link has expired.',
  revoked: 'This link was revoked by the person who shared it.',
  limit: 'This link has reached its download limit.',
  unknown: 'There is no such link on this relay.',
};

async function refusal(resp, path) {
  const text = await resp.text();
  if (path.startsWith('c/') && resp.status === 404) {
    return new Refused('missing', 'The relay could not serve part of this file (it lacks or lost a piece of it); nothing of it is shown.');
  }
  const m = text.match(/data-error="([a-z]+)"/);
  const kind = m ? m[1] : 'error';
  if (resp.status === 403) return new Refused('wrong-password', 'Wrong password.');
  return new Refused(MESSAGES[kind] ? kind : 'error', MESSAGES[kind] || `The relay answered ${resp.status}.`);
}

const TAMPERED = "This link's data was tampered with: it does not verify, so nothing of it is shown.";

let link; // { tokenText, token, key, access, record }

async function get(path) {
  const resp = await fetch(`/s/${link.tokenText}/${path}`, {
    headers: { 'X-Weft-Access': link.access }, cache: 'no-store', credentials: 'omit',
  });
  if (!resp.ok) throw await refusal(resp, path);
  return new Uint8Array(await resp.arrayBuffer());
}

async function openWith(password) {
  const s = await deriveSecrets(link.key, link.token, password);
  link.access = b64urlEncode(s.access);
  const sealed = await get('record');
  let record;
  try {
    record = checkRecord(JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(openRecord(s.recordKey, link.token, sealed))));
  } catch (e) {
    throw new Refused('tampered', TAMPERED);
  }
  return record;
}

async function fileBytes(f) {
  const parts = [];
  for (const c of f.chunks) {
    const ct = await get(`c/${c.id}`);
    try {
      parts.push(openChunk(c, ct));
    } catch (e) {
      throw new Refused('tampered', TAMPERED);
    }
  }
  return parts;
}

let shownUrl = null;

async function show(f) {
  const content = $('content');
  content.replaceChildren();
  if (shownUrl) { URL.revokeObjectURL(shownUrl); shownUrl = null; }
  setStatus('loading', `Decrypting ${f.path}…`);
  let parts;
  try {
    parts = await fileBytes(f);
  } catch (e) {
    fail(e);
    return;
  }
  const mime = f.mime || 'application/octet-stream';
  const blob = new Blob(parts, { type: mime });
  const name = f.path.split('/').pop();
  content.dataset.path = f.path;
  if (mime.startsWith('text/')) {
    const pre = document.createElement('pre');
    pre.id = 'text';
    pre.textContent = new TextDecoder().decode(await blob.arrayBuffer());
    content.append(pre);
  } else if (mime.startsWith('image/')) {
    const img = document.createElement('img');
    img.id = 'image';
    img.alt = name;
    shownUrl = img.src = URL.createObjectURL(blob);
    content.append(img);
  } else if (mime === 'application/pdf') {
    const frame = document.createElement('iframe');
    frame.id = 'pdf';
    frame.title = name;
    shownUrl = frame.src = URL.createObjectURL(blob);
    content.append(frame);
  } else {
    const a = document.createElement('a');
    a.id = 'download';
    a.download = name;
    a.textContent = `Download ${name} (${humanBytes(f.size)})`;
    shownUrl = a.href = URL.createObjectURL(blob);
    content.append(a);
  }
  setStatus('shown', `${f.path} · ${humanBytes(f.size)} · every chunk verified and decrypted in your browser`);
}

function listing(record) {
  const nav = $('listing');
  const h = document.createElement('h2');
  h.textContent = `${record.name} (${record.files.length} file${record.files.length === 1 ? '' : 's'})`;
  const ul = document.createElement('ul');
  for (const f of [...record.files].sort((a, b) => a.path.localeCompare(b.path))) {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = '#' + location.hash.slice(1);
    a.dataset.path = f.path;
    a.textContent = f.path;
    a.addEventListener('click', (ev) => { ev.preventDefault(); show(f); });
    li.append(a, ` — ${humanBytes(f.size)}`);
    ul.append(li);
  }
  nav.replaceChildren(h, ul);
  setStatus('listing', `A folder: ${record.files.length} files. Choose one to view it.`);
}

function fail(e) {
  $('content').replaceChildren();
  if (e instanceof Refused) {
    if (e.state === 'tampered' || e.state === 'missing') $('listing').replaceChildren();
    setStatus(e.state, e.message);
  } else {
    setStatus('error', `Could not open the link: ${e && e.message ? e.message : e}`);
  }
}

async function opened(record) {
  $('password-form').hidden = true;
  $('title').textContent = record.name;
  document.title = `${record.name} · weft`;
  if (record.kind === 'file') await show(record.files[0]);
  else listing(record);
}

async function main() {
  const m = location.pathname.match(/^\/s\/([A-Za-z0-9_-]{22})\/?$/);
  const frag = location.hash.slice(1);
  let key;
  try { key = b64urlDecode(frag); } catch (e) { key = null; }
  if (!m || !key || key.length !== 32) {
    setStatus('error', 'This link is incomplete: the part after # is its key. Copy the whole link.');
    return;
  }
  link = { tokenText: m[1], token: b64urlDecode(m[1]), key };
  try {
    await opened(await openWith(null));
  } catch (e) {
    if (!(e instanceof Refused) || e.state !== 'wrong-password') { fail(e); return; }
    setStatus('password', 'This link is protected by a password.');
    const form = $('password-form');
    form.hidden = false;
    $('password').focus();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      setStatus('loading', 'Checking the password…');
      try {
        await opened(await openWith($('password').value));
      } catch (err) {
        if (err instanceof Refused && err.state === 'wrong-password') {
          setStatus('wrong-password', 'Wrong password. Try again.');
        } else {
          form.hidden = true;
          fail(err);
        }
      }
    });
  }
}

main();
