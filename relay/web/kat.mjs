// Prints the share-link known-answer vector computed with this package's JavaScript
// (the browser's code); crypto/tests/link_kat.txt must equal it, and the Rust unit test
// checks the same file. Run: npm run kat (after npm ci).
import { build } from 'esbuild';
const out = await build({ entryPoints: ['src/crypto.js'], bundle: true, format: 'esm', write: false, platform: 'neutral' });
const mod = await import('data:text/javascript;base64,' + Buffer.from(out.outputFiles[0].text).toString('base64'));
const key = new Uint8Array(32).fill(7), token = new Uint8Array(16).fill(9), nonce = new Uint8Array(24).fill(5);
const pt = new TextEncoder().encode('{"v":1,"kind":"file","name":"a.txt","files":[]}');
const s = await mod.deriveSecrets(key, token, 'correct horse');
const p = await mod.deriveSecrets(key, token, null);
const sealed = mod.sealRecord(s.recordKey, token, pt, nonce);
const opened = new TextDecoder().decode(mod.openRecord(s.recordKey, token, sealed));
if (opened !== new TextDecoder().decode(pt)) throw new Error('round trip failed');
console.log(`key=${mod.b64urlEncode(key)} token=${mod.b64urlEncode(token)} access_pw=${mod.b64urlEncode(s.access)} access_nopw=${mod.b64urlEncode(p.access)} sealed_pw=${mod.hex(sealed)}`);
