// Opens share links in a real headless Chromium (Debian's, driven by playwright-core)
// and checks what the page shows. Run by tests/tests/links.rs with one argument: a
// JSON file {chromium, cases: [...]}; each case is {name, url, expect, ...} (see
// check() below). Prints one line per case and "N passed, M failed"; exits 1 on any
// failure.
import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const FINAL = ['password', 'wrong-password', 'expired', 'revoked', 'limit', 'unknown', 'tampered', 'missing', 'error', 'listing', 'shown'];
const profile = mkdtempSync(join(tmpdir(), 'weft-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: cfg.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function state(page, except) {
  await page.waitForFunction(([final, except]) => {
    const s = document.getElementById('status');
    return s && final.includes(s.dataset.state) && s.dataset.state !== except;
  }, [FINAL, except || ''], { timeout: 30000 });
  return page.$eval('#status', (s) => ({ state: s.dataset.state, text: s.textContent }));
}

function expectEq(what, got, want) {
  if (got !== want) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

async function shown(page, c) {
  if (c.text !== undefined) {
    expectEq('text shown', await page.$eval('#text', (e) => e.textContent), c.text);
  }
  if (c.sha256 !== undefined) {
    // The image must have decoded, at its size, from exactly the original bytes.
    await page.waitForFunction(() => { const i = document.getElementById('image'); return i && i.complete; });
    const img = await page.$eval('#image', (i) => ({ w: i.naturalWidth, h: i.naturalHeight }));
    expectEq('image size', `${img.w}x${img.h}`, `${c.width}x${c.height}`);
    const bytes = await page.$eval('#image', async (i) => Array.from(new Uint8Array(await (await fetch(i.src)).arrayBuffer())));
    expectEq('image bytes sha256', createHash('sha256').update(Buffer.from(bytes)).digest('hex'), c.sha256);
  }
}

async function check(c) {
  const page = await context.newPage();
  const statuses = [];
  page.on('response', (r) => statuses.push([new URL(r.url()).pathname, r.status()]));
  try {
    const resp = await page.goto(c.url, { waitUntil: 'load' });
    if (c.status !== undefined) expectEq('page status', resp.status(), c.status);
    if (c.error !== undefined) {
      // An error page of the relay itself (no script runs).
      expectEq('error kind', await page.$eval('#error', (e) => e.dataset.error), c.error);
      if (c.message) {
        const t = await page.$eval('#error', (e) => e.textContent);
        if (!t.includes(c.message)) throw new Error(`error page says ${JSON.stringify(t)}`);
      }
      return;
    }
    let s = await state(page);
    if (c.password !== undefined) {
      expectEq('asks for the password', s.state, 'password');
      await page.fill('#password', c.password);
      await page.click('#unlock');
      s = await state(page, 'password');
    }
    if (c.open) {
      expectEq('state', s.state, 'listing');
      const paths = await page.$$eval('#listing a[data-path]', (as) => as.map((a) => a.dataset.path));
      expectEq('listing', JSON.stringify(paths), JSON.stringify(c.files));
      await page.click(`#listing a[data-path="${c.open}"]`);
      s = await state(page, 'listing');
    }
    expectEq('state', s.state, c.expect);
    if (c.message && !s.text.includes(c.message)) throw new Error(`status says ${JSON.stringify(s.text)}`);
    if (c.record_status !== undefined) {
      const rec = statuses.filter(([p]) => p.endsWith('/record')).map(([, st]) => st);
      expectEq('last record status', rec[rec.length - 1], c.record_status);
    }
    if (c.expect === 'shown') await shown(page, c);
    if (c.expect === 'tampered' || c.expect === 'missing') {
      expectEq('nothing shown', await page.$eval('#content', (e) => e.childElementCount), 0);
    }
  } finally {
    await page.close();
  }
}

let passed = 0, failed = 0;
for (const c of cfg.cases) {
  try {
    await check(c);
    passed++;
    console.log(`ok   ${c.name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${c.name}: ${e.message.split('\n')[0]}`);
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
