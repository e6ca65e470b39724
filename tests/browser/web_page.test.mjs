// The page `lancet serve` answers at "/", driven in a real browser: Debian's Chromium, headless,
// through playwright-core (tests/browser/setup.sh). One test per flow — chat streaming, chat with
// an uploaded image, text-to-image, a video job — each leaving a screenshot in
// $LANCET_BROWSER_ARTIFACTS.
// Run by tests/browser/run.sh (CTest), which skips when node, playwright-core or chromium is
// missing. Env: LANCET_BIN (the lancet binary), CHROMIUM (the browser), LANCET_BROWSER_ARTIFACTS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const bin = process.env.LANCET_BIN;
const artifacts = process.env.LANCET_BROWSER_ARTIFACTS || path.resolve('browser-artifacts');
let dir, server, browser, url;

before(async () => {
  fs.mkdirSync(artifacts, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lancet-browser-'));
  execFileSync(bin, ['synth', '--preset', 'tiny', '-o', path.join(dir, 'tiny')], { stdio: 'ignore' });
  server = spawn(bin, ['-t', '1', 'serve', '-m', path.join(dir, 'tiny'), '--port', '0',
                       '--tmp-dir', dir, '--max-steps', '1000'], { stdio: ['ignore', 'ignore', 'pipe'] });
  // The start-up line names the port: "lancet: serving http://127.0.0.1:PORT/ (...)".
  url = await new Promise((resolve, reject) => {
    let err = '';
    server.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/serving (http:\/\/[0-9.]+:\d+\/)/);
      if (m) resolve(m[1]);
    });
    server.on('exit', (code) => reject(new Error(`lancet serve exited ${code}: ${err}`)));
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.kill('SIGTERM');
    await new Promise((r) => server.on('exit', r));
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function open() {
  const page = await browser.newPage({ viewport: { width: 900, height: 800 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  return { page, errors };
}

test('chat streams a reply', async () => {
  const { page, errors } = await open();
  // Count the server-sent events the page reads.
  let sse = '';
  page.on('response', async (r) => {
    if (r.url().endsWith('/v1/chat/completions')) sse = await r.text().catch(() => '');
  });
  await page.fill('#max', '12');
  await page.fill('#q', 'Hello there');
  await page.click('#send');
  const reply = page.locator('#log .assistant[data-done="1"]');
  await reply.waitFor({ timeout: 20000 });
  await page.screenshot({ path: path.join(artifacts, 'chat.png'), fullPage: true });
  assert.equal(await page.locator('#log .user').textContent(), 'Hello there');
  assert.ok((await reply.textContent()).length > 0, 'empty reply');
  assert.equal(await page.locator('#log .err').count(), 0);
  await page.waitForTimeout(50);
  assert.ok(sse.includes('data: [DONE]'), 'the reply was not a server-sent event stream');
  assert.ok(sse.split('chat.completion.chunk').length > 3, 'fewer chunks than tokens');
  assert.deepEqual(errors, []);
  await page.close();
});

test('chat with an uploaded image answers it', async () => {
  // A picture to upload: lancet's own t2i output.
  const pic = path.join(dir, 'pic.png');
  execFileSync(bin, ['run', '--model', path.join(dir, 'tiny'), '--task', 't2i', '-p', 'a cat',
                     '--size', '32x32', '--steps', '1', '-o', pic], { stdio: 'ignore' });
  const { page, errors } = await open();
  let sent = null;
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/chat/completions')) sent = JSON.parse(r.postData());
  });
  await page.fill('#max', '6');
  await page.setInputFiles('#img', pic);
  await page.fill('#q', 'What is in the picture?');
  await page.click('#send');
  const reply = page.locator('#log .assistant[data-done="1"]');
  await reply.waitFor({ timeout: 30000 });
  await page.screenshot({ path: path.join(artifacts, 'chat_image.png'), fullPage: true });
  assert.equal(await page.locator('#log .user img').count(), 1);
  assert.equal(await page.locator('#log .err').count(), 0);
  const parts = sent.messages[0].content;
  assert.equal(parts[0].type, 'image_url');
  assert.match(parts[0].image_url.url, /^data:image\/png;base64,/);
  assert.equal(parts[1].text, 'What is in the picture?');
  assert.deepEqual(errors, []);
  await page.close();
});

test('text to image shows the picture', async () => {
  const { page, errors } = await open();
  await page.click('#tab-image');
  await page.fill('#ip', 'A red fox sitting in fresh snow');
  await page.fill('#isize', '64x48');
  await page.fill('#isteps', '4');
  await page.click('#igo');
  const img = page.locator('#iout[data-done="1"]');
  await img.waitFor({ timeout: 20000 });
  const size = await img.evaluate((i) => [i.naturalWidth, i.naturalHeight]);
  assert.deepEqual(size, [64, 48]);
  assert.match(await page.locator('#istatus').textContent(), /done in .* \(64x48\)/);
  await page.screenshot({ path: path.join(artifacts, 'text_to_image.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

// Steps (at most the sampler's 1000) that make a 32x32, 81-frame t2v job on the tiny model last about `seconds` on this machine
// (timed with a 200-step job through the API), so the page's 300 ms polls see the bar between 0 and
// 100 on a fast, idle machine as well as on a loaded one.
async function stepsLasting(seconds) {
  const calib = 200;
  const t0 = Date.now();
  const r = await fetch(`${url}v1/videos`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ task: 't2v', prompt: 'timing', size: '32x32', frames: 81, steps: calib }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  const { id } = await r.json();
  for (;;) {
    const st = await (await fetch(`${url}v1/videos/${id}`)).json();
    if (st.status === 'succeeded') break;
    assert.ok(st.status === 'queued' || st.status === 'running', JSON.stringify(st));
    await new Promise((ok) => setTimeout(ok, 20));
  }
  const perStep = Math.max(1e-3, (Date.now() - t0) / 1000 / calib);
  return Math.min(1000, Math.max(100, Math.ceil(seconds / perStep)));
}

test('a video job shows progress and plays the MP4', async () => {
  const steps = await stepsLasting(3);
  const { page, errors } = await open();
  await page.click('#tab-video');
  await page.fill('#vp', 'Waves rolling onto a sandy beach');
  await page.fill('#vsize', '32x32');
  await page.fill('#vframes', '81');
  await page.fill('#vsteps', String(steps));
  // The statuses the page polls, to see the bar move through intermediate steps.
  const seen = [];
  page.on('response', async (r) => {
    if (/\/v1\/videos\/[^/]+$/.test(r.url()) && r.request().method() === 'GET')
      seen.push((await r.json().catch(() => ({}))).progress);
  });
  await page.click('#vgo');
  // Progress shows while it runs.
  await page.waitForFunction(() => {
    const v = document.getElementById('vprog').value;
    return v > 0 && v < 100;
  }, null, { timeout: 20000, polling: 20 });
  await page.screenshot({ path: path.join(artifacts, 'video_progress.png'), fullPage: true });
  await page.waitForFunction(() => /^succeeded/.test(document.getElementById('vstatus').textContent),
                             null, { timeout: 120000 });
  assert.equal(await page.locator('#vprog').evaluate((p) => p.value), 100);
  assert.ok(seen.some((p) => p > 0 && p < 100), `no intermediate progress in ${seen}`);
  // The MP4 (H.264) is decoded by the browser and plays.
  await page.locator('#vout[data-done="1"]').waitFor({ timeout: 10000 });
  const v = await page.locator('#vout').evaluate((e) => ({
    w: e.videoWidth, h: e.videoHeight, d: e.duration, err: e.error && e.error.code,
  }));
  assert.equal(v.err, null);
  assert.deepEqual([v.w, v.h], [32, 32]);
  assert.ok(v.d > 0, `duration ${v.d}`);
  await page.screenshot({ path: path.join(artifacts, 'video_done.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
