// One tab of /demo leaves a voicemail: goes online, calls a uid that never answers with
// "Leave a voicemail"; after the page's 12 s the robot is invited with `record`, greets,
// beeps and records the fake microphone (Chromium's beeping test source) for `seconds`;
// the page hangs up (the robot stops recording on the leave, uploads and leaves), lists
// its recordings and plays the newest one.
//   node voicemail-page.mjs http://127.0.0.1:PORT [seconds]
// Prints {recordings: [...], played_s, shown} as one JSON line.
import { launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const base = process.argv[2];
const seconds = Number(process.argv[3] || 4);

run(async () => {
  const browser = await launch();
  try {
    const page = await openDemo(browser.context, base, "web-caller");
    await page.fill("#callee", "nobody-home");
    await page.click("#voicemail");
    await waitConnected(page, "robot", 40000);
    // the greeting and the beep: the robot's audio stops when it starts recording
    await page.waitForFunction(async () => {
      const p = window.rtcDemo.channel()?.peers.get("robot");
      if (!p) return false;
      const report = await p.pc.getStats();
      let inbound = null;
      report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s; });
      if (!inbound || !inbound.packetsReceived) return false;
      const now = inbound.packetsReceived;
      window.__last = window.__last || { n: -1, since: Date.now() };
      if (window.__last.n !== now) window.__last = { n: now, since: Date.now() };
      return Date.now() - window.__last.since > 1500; // getStats() counts move about once a second
    }, null, { timeout: 60000, polling: 100 });
    await page.waitForTimeout(seconds * 1000);
    await page.click("#hangup");
    // the upload lands once the robot has left
    let rows = [];
    for (let i = 0; i < 60 && rows.length === 0; i++) {
      await page.waitForTimeout(500);
      await page.click("#recordings-refresh");
      await page.waitForTimeout(300);
      rows = await page.$$eval("#recordings tr", (trs) => trs.map((t) => t.children[2].textContent));
    }
    const played = await page.evaluate(async () => {
      const a = document.querySelector("#recordings tr:last-child audio");
      if (!a) return -1;
      a.muted = true;
      await a.play();
      await new Promise((r) => setTimeout(r, 1500));
      return a.currentTime;
    });
    return { recordings: rows, played_s: played, shown: await shown(page) };
  } finally {
    await browser.close();
  }
});
