// Shared helpers of the browser tests: start Debian's Chromium through playwright-core and
// drive the /demo page. Never `npx playwright install`: the browser is /usr/bin/chromium.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--autoplay-policy=no-user-gesture-required",
];

/** Starts Chromium with a fresh user data dir. Returns {context, close}. */
export async function launch() {
  const dir = mkdtempSync(join(tmpdir(), "rtc-chromium-"));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Opens /demo and goes online as `uid`. */
export async function openDemo(context, base, uid) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${uid}] page error: ${e.message}`));
  await page.goto(`${base}/demo`);
  await page.fill("#uid", uid);
  await page.click("#online");
  return page;
}

/** Waits until the page's peer table shows `peer` connected. */
export async function waitConnected(page, peer, timeout = 20000) {
  await page.waitForSelector(`#peers tr[data-uid="${peer}"][data-state="connected"]`, { timeout });
}

/** Inbound audio of the page's connection to `peer`, from getStats(). */
export async function inboundAudio(page, peer) {
  return page.evaluate(async (uid) => {
    const ch = window.rtcDemo.channel();
    const p = ch && ch.peers.get(uid);
    if (!p) return { error: `no connection to ${uid}` };
    const report = await p.pc.getStats();
    let inbound = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
    });
    return {
      connectionState: p.pc.connectionState,
      packetsReceived: inbound ? inbound.packetsReceived : 0,
      packetsLost: inbound ? inbound.packetsLost : 0,
      totalAudioEnergy: inbound ? inbound.totalAudioEnergy || 0 : 0,
      totalSamplesReceived: inbound ? inbound.totalSamplesReceived || 0 : 0,
    };
  }, peer);
}

/** What the page shows: the peer table and its log. */
export async function shown(page) {
  return page.evaluate(() => ({
    peers: [...document.querySelectorAll("#peers tr")].map((r) => [r.dataset.uid, r.dataset.state]),
    status: document.getElementById("status").textContent,
    log: document.getElementById("log").textContent.trim().split("\n"),
  }));
}

/** Runs `body`, prints its result as one JSON line; on failure prints {error} and exits 1. */
export async function run(body) {
  try {
    const result = await body();
    console.log(JSON.stringify(result));
    process.exit(0);
  } catch (e) {
    console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
    process.exit(1);
  }
}
